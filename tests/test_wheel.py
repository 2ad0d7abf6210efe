"""The wheel as a user installs it: built by `python -m build`, installed into a fresh venv, used outside the checkout.

`python -m build` makes the sdist from the checkout and then the wheel from that sdist, as a user's build does.
The wheel goes into a new venv made with `python -m venv --without-pip`, by `pip --python VENV install --no-deps`.
Everything is then run from a temp dir outside the checkout, with the venv's own `vspipe` and `erdn`.

Reusing the heavy dependencies: torch, numpy, pyzmq, ... are not installed again (gigabytes). A `.pth` line in the
new venv puts the test venv's site-packages at the end of its sys.path. Python reads `.pth` files only in
site-packages directories themselves, not in directories that a `.pth` line adds, so the checkout's editable
finder (`__editable__.erdn_vs-*.pth` in the test venv) is never installed. The test checks that `erdn_vs`, `worker`
and `training` come from the new venv and that no editable finder is active. `vapoursynth` and
`vapoursynth-bestsource` are installed into the new venv (from pip's cache, a few MB). `vspipe` picks the Python
to embed from the per-user config that `vapoursynth config` writes for each VapourSynth install, keyed by the
install's path. That config goes to a temp `XDG_CONFIG_HOME`, so the user's own config is not touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
W, H, LENGTH = 64, 48, 6
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) from `python -m build` on the checkout (run from elsewhere: the checkout's ignored `build/`
    folder would otherwise shadow the `build` module)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], cwd=out, timeout=600)
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


def test_artifacts_carry_the_manifest_weights_and_configs(dist) -> None:
    sdist, wheel = dist
    manifest = (REPO / "plugin_manifest.yaml").read_bytes()
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert z.read("erdn_vs/plugin_manifest.yaml") == manifest  # the one manifest, copied at build time
    with tarfile.open(sdist) as t:
        root = t.getnames()[0].split("/")[0]
        assert t.extractfile(f"{root}/plugin_manifest.yaml").read() == manifest
    for path in sorted((REPO / "worker" / "weights").glob("*.safetensors")):
        assert f"worker/weights/{path.name}" in names
    for path in sorted((REPO / "training" / "configs").rglob("*.yaml")):
        assert path.relative_to(REPO).as_posix() in names
    assert not [n for n in names if "checkpoints/" in n or n.endswith(".ckpt")], "training checkpoints never ship"
    assert not (REPO / "erdn_vs" / "plugin_manifest.yaml").exists(), "the build must not copy into the checkout"


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    _, wheel = dist
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    purelib = run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=root).strip()
    Path(purelib, "zz_heavy_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps",
         "--ignore-installed", wheel, f"vapoursynth=={version('vapoursynth')}",
         f"vapoursynth-bestsource=={version('vapoursynth-bestsource')}"], cwd=root, timeout=600)
    return venv


@pytest.fixture(scope="module")
def user_env(venv, isolated_runtime_dir, tmp_path_factory) -> Iterator[dict[str, str]]:
    """A user's shell: the venv's bin first, no PYTHONPATH, a private vapoursynth config and worker endpoint."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ERDN_MANIFEST")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    env["ERDN_WORKER_ENDPOINT"] = f"ipc://{isolated_runtime_dir / 'run'}/wheel-{os.getpid()}.sock"
    env["OMP_NUM_THREADS"] = "1"  # the autostarted worker: one thread on a shared CPU
    run([venv / "bin" / "vapoursynth", "config"], cwd=venv, env=env)
    yield env
    subprocess.run([venv / "bin" / "erdn", "worker", "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def outside(tmp_path) -> Path:
    assert not tmp_path.resolve().is_relative_to(REPO)
    return tmp_path


def test_the_installed_packages_are_the_wheels(venv, user_env, outside) -> None:
    code = ("import json, sys, erdn_vs, worker, training; from erdn_vs.manifest import manifest_path; "
            "print(json.dumps({'files': [m.__file__ for m in (erdn_vs, worker, training)], "
            "'manifest': str(manifest_path()), 'finders': [repr(f) for f in sys.meta_path]}))")
    got = json.loads(run([venv / "bin" / "python", "-c", code], cwd=outside, env=user_env))
    site = str(venv / "lib")
    assert all(f.startswith(site) for f in got["files"]), got["files"]
    assert got["manifest"].startswith(site) and got["manifest"].endswith("erdn_vs/plugin_manifest.yaml")
    assert not [f for f in got["finders"] if "editable" in f.lower()], got["finders"]


def source_video(ffmpeg: str, path: Path) -> Path:
    """A short lossless RGB clip with motion (ffmpeg's test pattern)."""
    run([ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24",
         "-frames:v", LENGTH, "-c:v", "ffv1", "-pix_fmt", "gbrp", path], cwd=path.parent)
    return path


def planes(raw: bytes) -> np.ndarray:
    """Raw planar RGB24 frames as (frames, 3 (R, G, B), H, W). vspipe writes the planes in the order G, B, R,
    as ffmpeg's gbrp does."""
    return np.frombuffer(raw, np.uint8).reshape(LENGTH, 3, H, W)[:, [2, 0, 1]]


def reference(video: Path, weights: Path) -> np.ndarray:
    """The shipped default model applied directly (torch, this process) to each of its windows, edges repeated."""
    import torch
    import vapoursynth as vs

    from worker.model import load_model

    clip = vs.core.bs.VideoSource(str(video))
    assert clip.format.id == vs.RGB24 and clip.num_frames == LENGTH
    frames = [np.stack([np.asarray(clip.get_frame(n)[p]) for p in range(3)]) / 255.0 for n in range(LENGTH)]
    model = load_model(weights).eval()
    r = model.frames // 2
    torch.set_num_threads(1)
    out = []
    with torch.no_grad():
        for n in range(LENGTH):
            window = np.stack([frames[min(max(n + d, 0), LENGTH - 1)] for d in range(-r, r + 1)]).astype(np.float32)
            y = model(torch.from_numpy(window)[None])[0].numpy()
            out.append(np.round(np.clip(y, 0, 1) * 255.0))
    return np.stack(out)


def test_vspipe_and_erdn_deblur_from_outside_the_checkout(venv, user_env, outside) -> None:
    """The README's script through the venv's real vspipe (the worker autostarts from the wheel), then `erdn deblur`
    on the same file: both give the model's output on every window."""
    import imageio_ffmpeg
    import yaml

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    video = source_video(ffmpeg, outside / "blurry.mkv")
    (outside / "deblur.vpy").write_text(
        "import vapoursynth as vs\nimport erdn_vs\n\n"
        'clip = vs.core.bs.VideoSource("blurry.mkv")\nclip = erdn_vs.deblur(clip)\nclip.set_output()\n')
    raw = subprocess.run([venv / "bin" / "vspipe", "deblur.vpy", "-"], cwd=outside, env=user_env,
                         capture_output=True, timeout=300)
    assert raw.returncode == 0, raw.stderr.decode()[-3000:]
    status = json.loads(run([venv / "bin" / "erdn", "worker", "status"], cwd=outside, env=user_env))
    cmdline = Path(f"/proc/{status['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].decode().startswith(str(venv)) and b"worker" in cmdline, cmdline  # autostarted, venv's Python

    default = yaml.safe_load((REPO / "plugin_manifest.yaml").read_text())["models"][0]
    installed = next((venv / "lib").glob(f"python3*/site-packages/{default['file']}"))
    want = reference(video, installed)
    got = planes(raw.stdout)
    assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1
    assert not np.array_equal(got, np.stack([np.asarray(f) for f in planes_of(video)]))  # the model changed it

    run([venv / "bin" / "erdn", "deblur", "blurry.mkv", "-o", "restored.mkv", "--lossless"], cwd=outside,
        env=user_env)
    decoded = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", outside / "restored.mkv", "-f",
                              "rawvideo", "-pix_fmt", "gbrp", "-"], capture_output=True, check=True).stdout
    assert np.array_equal(planes(decoded), got)

    configs = next((venv / "lib").glob("python3*/site-packages/training/configs"))
    printed = run([venv / "bin" / "erdn", "train", configs / "lite_synth_v3_f3.yaml", "--print-config"],
                  cwd=outside, env=user_env)
    assert "lite" in printed


def planes_of(video: Path) -> list[np.ndarray]:
    import vapoursynth as vs

    clip = vs.core.bs.VideoSource(str(video))
    return [np.stack([np.asarray(clip.get_frame(n)[p]) for p in range(3)]) for n in range(LENGTH)]
