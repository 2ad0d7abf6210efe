"""The ``erdn`` command: a thin dispatcher.

Each subcommand lives with the package that owns it and is imported only when run,
so ``erdn worker status`` never pays for torch and ``erdn train`` never for VapourSynth.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). Each module has ``main(argv: list[str]) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("training.demo", "deblur a built-in sample clip end to end; results in demo_out/"),
    "deblur": ("erdn_vs.render", "deblur a video file (vspipe + worker + ffmpeg); --script prints the .vpy"),
    "worker": ("worker.cli", "run the persistent model worker, or query it (status, stop)"),
    "export": ("worker.export", "export weights as ONNX graphs (stage 1, stage 2, whole window)"),
    "convert": ("worker.convert", "convert an official ERDN checkpoint to erdn-vs weights"),
    "synth": ("training.synth", "make paired blurry/sharp training clips (stills or your own high-fps video)"),
    "train": ("training.train", "train ERDN from a YAML config (resumes; torchrun for several GPUs)"),
    "eval": ("training.evaluate", "PSNR/SSIM of weights on a dataset, beside the blurry input's own"),
    "bench": ("worker.bench", "measure speed: model, worker, vspipe pipeline, stage-1 cache, vs-mlrt, cold/warm start"),
}


def usage() -> str:
    lines = ["usage: erdn COMMAND [options]", "", "commands:"]
    lines += [f"  {name:10s} {doc}" for name, (_, doc) in SUBCOMMANDS.items()]
    lines += ["", "Run `erdn COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"erdn: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
