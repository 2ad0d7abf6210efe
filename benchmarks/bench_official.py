"""Our `paper` ERDN against the official implementation: same weights, same output, time.

The official code (TencentCloud/ERDN) is not part of this repository. Point this script
at a local copy whose ``model.erdn`` imports on the CPU: its compiled DCN extension must
be replaced by a module ``dcn.modules.modulated_deform_conv`` on one of the given paths
(e.g. built on ``torchvision.ops.deform_conv2d``), and ``utils.calc_meanFilter`` must not
hard-code ``device='cuda'``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_official.py \\
        --official-path /tmp/official_shim --official-path /tmp/official_erdn

Random weights (the official initialisation plus random offset convolutions, which it
zeroes) go into the official model, through ``worker.convert`` into ours; both run the
same random window, the script prints the largest output difference and both times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import torch


def make_official(paths: list[str]) -> torch.nn.Module:
    sys.path[:0] = paths
    from model.erdn import ERDN as OfficialERDN  # the official code, from --official-path

    with contextlib.redirect_stdout(io.StringIO()):  # it prints while building
        model = OfficialERDN(device="cpu", phase="double")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:  # zero in the official init: give the offsets and masks some play
                p.copy_(torch.randn_like(p) * (0.3 / p[0].numel() ** 0.5 if p.dim() > 1 else 2.0))
    return model.eval()


def timed(fn, x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Wall-clock and process CPU seconds of ``fn(x)``. On a shared machine the CPU time
    (with --threads 1) is the steadier measure of the work done."""
    with torch.inference_mode():
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(x)
        return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-path", action="append", required=True, help="added to sys.path (repeatable)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (the best is reported)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from worker.convert import convert_state_dict

    official = make_official(args.official_path)
    ours = convert_state_dict(official.state_dict())
    h, w = args.size
    torch.manual_seed(1)
    x = torch.rand(1, 5, 3, h, w)

    def run_official(v: torch.Tensor) -> torch.Tensor:
        return official(v)[0]

    # Warm both up on a small window (allocator, oneDNN kernels), then alternate timed runs.
    timed(run_official, x[..., :64, :64])
    timed(ours, x[..., :64, :64])
    runs: dict[str, list[tuple[float, float]]] = {"official": [], "ours": []}
    for _ in range(args.repeats):
        *t, y_official = timed(run_official, x)
        runs["official"].append(tuple(t))
        *t, y_ours = timed(ours, x)
        runs["ours"].append(tuple(t))
    diff = (y_official - y_ours).abs().max().item()
    print(f"window 1x5x3x{h}x{w}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"max |official - ours| = {diff:.3e}")
    best = {}
    for name, times in runs.items():
        best[name] = (min(t[0] for t in times), min(t[1] for t in times))
        listed = ", ".join(f"{wall:.2f}/{cpu:.2f}" for wall, cpu in times)
        print(f"{name:9s} best wall {best[name][0]:.2f} s, best cpu {best[name][1]:.2f} s  (runs wall/cpu: {listed})")
    print(
        f"speed-up (official / ours): wall {best['official'][0] / best['ours'][0]:.2f}x, "
        f"cpu {best['official'][1] / best['ours'][1]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
