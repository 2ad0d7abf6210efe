"""How much blur varies from frame to frame in `erdn synth` clips, with and without hand shake.

For each frame of each clip: its blurry-vs-sharp PSNR, and how much sharper the sharpest frame of its
5-frame window is (what a 5-frame model could borrow from a neighbour). Prints one line per --shake value:

    .venv/bin/python benchmarks/synth_blur_variation.py --clips 10 --shake 0 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data.images import to_uint8  # noqa: E402
from training.metrics import psnr  # noqa: E402
from training.synth import SynthOptions, expose, load_stills, render_still_clip  # noqa: E402


def frame_psnrs(opts: SynthOptions, clip: int, stills: list[np.ndarray]) -> np.ndarray:
    sub = render_still_clip(np.random.default_rng([opts.seed, clip]), stills, opts)
    s = opts.subframes
    pairs = (expose(sub[k * s : (k + 1) * s]) for k in range(opts.frames))
    return np.array([psnr(to_uint8(blurry), to_uint8(sharp), border=0) for blurry, sharp in pairs])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--shake", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--seed", type=int, default=2026)
    a = p.parse_args()
    for shake in a.shake:
        opts = SynthOptions(out="", shake=shake, seed=a.seed)
        stills = load_stills(opts)
        psnrs, borrow = [], []
        for clip in range(a.clips):
            ps = frame_psnrs(opts, clip, stills)
            psnrs += list(ps)
            borrow += [ps[k - 2 : k + 3].max() - ps[k] for k in range(2, len(ps) - 2)]
        borrow_arr = np.array(borrow)
        print(
            f"shake {shake}: blurry PSNR mean {np.mean(psnrs):.2f} dB; sharpest frame of the 5-frame window "
            f"minus the centre: {borrow_arr.mean():.2f} dB on average, > 3 dB for {100 * np.mean(borrow_arr > 3):.0f}% "
            f"of frames ({a.clips} clips of {opts.frames} frames, {opts.width}x{opts.height}, no noise)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
