"""``erdn eval WEIGHTS DATASET``: PSNR/SSIM per video and overall, beside the blurry input's own.

The numbers follow the official ERDN inference script: frames cropped to a multiple of 4,
outputs rounded to 8 bits, 4 border pixels ignored, SSIM with an 11x11 Gaussian window.
Without ``--border`` only frames with a full window are scored (the first and last
``frames // 2`` are skipped); with ``--border`` the sequence is padded at both ends the way
the official script pads it (its first and last ``frames // 2`` frames repeated in order).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from training.data import DatasetError, find_videos
from training.data.images import read_rgb, to_uint8, write_rgb
from training.metrics import psnr, ssim

SIZE_MULTIPLE = 4  # the official script crops frames to a multiple of 4


def official_windows(length: int, frames: int, border: bool) -> list[list[int]]:
    """Frame indices of every scored window, as the official ``gene_seq`` builds them."""
    half = frames // 2
    idx = list(range(length))
    if border:
        idx = idx[:half] + idx + idx[length - half :]
    return [idx[i : i + frames] for i in range(len(idx) - 2 * half)]


def resolve_weights(path: str | Path) -> str | Path:
    """``path``, or, when no such file exists and it names a shipped model (plugin_manifest.yaml), that
    model's weights file: ``erdn eval erdn-lite-synth ...``, ``model.init_from: erdn-lite-synth``."""
    if Path(path).exists():
        return path
    try:
        from erdn_vs.manifest import ManifestError, load_manifest

        return load_manifest().model(str(path)).path
    except (ImportError, ValueError, ManifestError):
        return path  # load_model says the file does not exist


def load_weights_or_checkpoint(path: str | Path, device: str):  # noqa: ANN201 - ERDN
    """A weights file, a shipped model's name, or the model inside a training checkpoint (``last.ckpt`` of a
    running job)."""
    from worker.model import build_model, load_model

    path = resolve_weights(path)
    if Path(path).suffix != ".ckpt":
        return load_model(path, device=device)
    from training.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    model = build_model(state["preset"], int(state["frames"]))
    model.load_state_dict(state["model"])
    model.metadata = {"iterations": int(state["iteration"])}
    return model.to(device).eval()


def evaluate(
    weights: str | Path,
    dataset: str | Path,
    split: str = "test",
    layout: str = "auto",
    border: bool = False,
    save_dir: str | Path | None = None,
    compare_png: str | Path | None = None,
    max_windows: int = 0,
    device: str = "cpu",
    centres_of: int = 0,
) -> dict:
    """Score ``weights`` on a dataset split; returns per-video and overall means."""
    import torch

    model = load_weights_or_checkpoint(weights, device)
    videos = find_videos(dataset, split, layout)
    frames = model.frames
    per_video: dict[str, dict[str, float]] = {}
    all_scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "blurry_psnr": [], "blurry_ssim": []}
    compare_done = False
    for video in videos:
        scores: dict[str, list[float]] = {k: [] for k in all_scores}
        windows = official_windows(len(video), max(frames, centres_of), border)
        if centres_of > frames:  # the centres a longer-window model scores, each with this model's window
            cut = (centres_of - frames) // 2
            windows = [win[cut : cut + frames] for win in windows]
        if max_windows:
            windows = windows[:max_windows]
        for win in windows:
            blur = [read_rgb(video.blur[i]) for i in win]
            centre = win[frames // 2]
            gt = read_rgb(video.sharp[centre])
            h, w = gt.shape[:2]
            h, w = h - h % SIZE_MULTIPLE, w - w % SIZE_MULTIPLE
            blur = [b[:h, :w] for b in blur]
            gt = gt[:h, :w]
            x = torch.from_numpy(np.stack(blur).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)[None].to(device)
            with torch.no_grad():
                restored = to_uint8(model(x)[0].float().cpu().numpy().transpose(1, 2, 0))
            blurry = blur[frames // 2]
            scores["psnr"].append(psnr(restored, gt))
            scores["ssim"].append(ssim(restored, gt))
            scores["blurry_psnr"].append(psnr(blurry, gt))
            scores["blurry_ssim"].append(ssim(blurry, gt))
            if save_dir:
                write_rgb(Path(save_dir) / video.name / f"{video.blur[centre].stem}.png", restored)
            if compare_png and not compare_done:
                write_rgb(compare_png, np.concatenate([blurry, restored, gt], axis=1))
                compare_done = True
        if not windows:
            continue
        per_video[video.name] = {k: float(np.mean(v)) for k, v in scores.items()} | {"frames": len(windows)}
        for k, v in scores.items():
            all_scores[k] += v
    if not all_scores["psnr"]:
        raise DatasetError(f"no frame could be scored: every video is shorter than {frames} frames (try --border)")
    overall = {k: float(np.mean(v)) for k, v in all_scores.items()} | {"frames": len(all_scores["psnr"])}
    return {
        "weights": str(weights),
        "dataset": str(dataset),
        "split": split,
        "border": border,
        "videos": per_video,
        "overall": overall,
    }


def format_report(result: dict) -> str:
    lines = [f"{'video':24s} {'frames':>6s}  {'PSNR':>7s} {'SSIM':>6s}   {'blurry PSNR':>11s} {'SSIM':>6s}"]
    rows = list(result["videos"].items()) + [("OVERALL", result["overall"])]
    for name, s in rows:
        restored = f"{s['psnr']:7.3f} {s['ssim']:6.4f}"
        blurry = f"{s['blurry_psnr']:11.3f} {s['blurry_ssim']:6.4f}"
        lines.append(f"{name:24s} {s['frames']:6d}  {restored}   {blurry}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="erdn eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("weights", help="weights (.safetensors from erdn train / erdn convert), a training .ckpt, or a "
                   "shipped model's name (plugin_manifest.yaml, e.g. erdn-lite-synth)")
    p.add_argument("dataset", help="dataset folder (dvd, dvd-original, gopro or paired layout)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--layout", default="auto")
    p.add_argument("--border", action="store_true", help="also score the first/last frames (official padding)")
    p.add_argument("--save-dir", help="write restored frames here (<video>/<frame>.png)")
    p.add_argument("--compare-png", help="write one side-by-side PNG: blurry | restored | sharp")
    p.add_argument("--max-windows", type=int, default=0, help="score at most this many frames per video (0: all)")
    p.add_argument("--centres-of", type=int, default=0, choices=[0, 3, 5], metavar="N",
                   help="score the frames that a model of N input frames scores, so that 3- and 5-frame models "
                   "are compared on the same frames (default: this model's own)")
    p.add_argument("--json", help="also write the numbers as JSON here")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    a = p.parse_args(argv)
    import torch

    from training.checkpoint import CheckpointError
    from worker.model.weights import WeightsError

    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    try:
        result = evaluate(
            a.weights, a.dataset, a.split, a.layout, a.border, a.save_dir, a.compare_png, a.max_windows, device,
            a.centres_of,
        )
    except (DatasetError, WeightsError, CheckpointError) as e:
        print(f"erdn eval: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
