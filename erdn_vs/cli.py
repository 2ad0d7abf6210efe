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
    "deblur": ("erdn_vs.deblur_cli", "deblur a video file (vspipe + worker + ffmpeg); --script prints the .vpy"),
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
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print(f"erdn {name}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        root = (e.name or "").partition(".")[0]
        if root not in OPTIONAL_PACKAGES:
            raise  # a bug, not the user's environment
        print(f"erdn {name}: needs the Python package {OPTIONAL_PACKAGES[root]!r}, which is not installed here; "
              f"install it with `pip install 'erdn-vs[{EXTRAS.get(name, 'all')}]'` (or `pip install -e .[all]` "
              "in a checkout)", file=sys.stderr)
        return 1
    except OSError as e:  # a path the user named that cannot be read or written, a full disk, ...
        print(f"erdn {name}: {describe_os_error(e)}", file=sys.stderr)
        return 1


# import name -> package to install, for the dependencies that only some commands need
OPTIONAL_PACKAGES = {
    "torch": "torch", "torchvision": "torchvision", "safetensors": "safetensors", "onnx": "onnx",
    "onnxruntime": "onnxruntime-gpu", "skimage": "scikit-image", "scipy": "scipy", "tqdm": "tqdm",
    "tensorboard": "tensorboard", "matplotlib": "matplotlib", "imageio_ffmpeg": "imageio-ffmpeg", "ray": "ray",
    "vapoursynth": "vapoursynth",
}
# subcommand -> the pyproject extra that brings what it needs
EXTRAS = {"deblur": "video", "worker": "worker", "export": "worker", "convert": "worker", "bench": "all",
          "synth": "training", "train": "training", "eval": "training", "demo": "all"}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: what went wrong, on which path, and what to check."""
    what = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
    if e.filename is None:
        return what
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {what}; check the path and its permissions"


if __name__ == "__main__":
    sys.exit(main())
