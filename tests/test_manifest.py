"""plugin_manifest.yaml: its structure, its agreement with deblur's signature, and argument validation."""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import vapoursynth as vs
import yaml

from erdn_vs.filter import deblur
from erdn_vs.manifest import ManifestError, load_manifest, manifest_path, parse_manifest

ROOT = Path(__file__).resolve().parent.parent
core = vs.core


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


@pytest.fixture(scope="module")
def clip():
    return core.std.BlankClip(width=64, height=48, format=vs.YUV420P8, length=4)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    # deblur only checks at script time that the file exists; the worker reads it.
    path = tmp_path_factory.mktemp("w") / "some.safetensors"
    path.write_bytes(b"not read at script time")
    return str(path)


def test_real_manifest_loads(manifest):
    assert manifest.path == (ROOT / "plugin_manifest.yaml").resolve() == manifest_path().resolve()
    assert manifest.plugin["name"] == "erdn_vs" and manifest.plugin["version"]
    assert "erdn worker" in manifest.worker["command"]
    assert set(manifest.worker["backends"]) >= {"torch", "onnxruntime"}
    assert all(p.doc for p in manifest.functions["deblur"])
    assert load_manifest() is manifest  # loaded once


def test_worker_section_matches_the_worker_cli(manifest):
    from worker.cli import serve_parser

    defaults = serve_parser().parse_args([])
    assert manifest.worker["idle_timeout_s"] == defaults.idle_timeout
    assert manifest.worker["session_timeout_s"] == defaults.session_timeout
    assert manifest.worker["session_lease_s"] == defaults.session_lease
    assert manifest.worker["models_mb"] == defaults.models_mb
    assert manifest.worker["idle_release_s"] == defaults.idle_release
    assert manifest.worker["command"].startswith("erdn worker")


def test_manifest_and_signature_agree_both_ways(manifest):
    declared = manifest.functions["deblur"]
    sig = inspect.signature(deblur)
    assert [p.name for p in declared] == list(sig.parameters)
    for param in declared:
        actual = sig.parameters[param.name]
        if param.required:
            assert actual.default is inspect.Parameter.empty, param.name
            assert actual.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        else:
            assert actual.default == param.default and type(actual.default) is type(param.default), param.name
            assert actual.kind is inspect.Parameter.KEYWORD_ONLY, param.name
        if param.nullable:
            assert "None" in str(actual.annotation), param.name


@pytest.mark.parametrize("entry", load_manifest().models, ids=lambda m: m.name)
def test_shipped_models_exist_with_their_checksum(entry):
    assert entry.path.is_file(), f"{entry.path} is listed in the manifest but missing"
    assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.sha256


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": 4}, "frames must be one of [3, 5]"),
        ({"frames": True}, "frames must be an int"),
        ({"tile": 16}, "tile is 16; use a value in [32, 16384]"),
        ({"tile": (64, "a")}, "tile must be an int or a pair"),
        ({"overlap": -1}, "overlap is -1"),
        ({"device": "gpu"}, "device 'gpu' is not valid"),
        ({"precision": "int8"}, "precision must be one of ['auto', 'fp32', 'fp16', 'bf16']"),
        ({"endpoint": "localhost:5555"}, "endpoint 'localhost:5555' is not valid"),
        ({"scene_change": 1}, "scene_change must be True or False"),
        ({"timeout": 0}, "timeout is 0"),
        ({"weights": "/nonexistent/w.safetensors"}, "weights file /nonexistent/w.safetensors does not exist"),
        ({"model": "no-such-model"}, "model 'no-such-model' is not in"),
    ],
)
def test_bad_arguments_are_one_clear_error(clip, kwargs, message):
    with pytest.raises(vs.Error) as e:
        deblur(clip, **kwargs)
    assert str(e.value).startswith("erdn_vs.deblur: ")
    assert message in str(e.value)


def test_model_and_weights_together(clip, weights):
    with pytest.raises(vs.Error, match="^erdn_vs.deblur: give model .* or weights .*, not both"):
        deblur(clip, model="x", weights=weights)


def test_frames_given_must_match_the_weights_file(clip, tmp_path):
    import torch

    from worker.model import build_model, save_model

    torch.manual_seed(0)
    path = save_model(build_model("tiny", frames=3), tmp_path / "three.safetensors")
    with pytest.raises(vs.Error, match=r"^erdn_vs.deblur: .*three.safetensors is a frames=3 model; pass frames=3"):
        deblur(clip, weights=str(path), frames=5)
    assert deblur(clip, weights=str(path), frames=3).num_frames == clip.num_frames
    assert deblur(clip, weights=str(path)).num_frames == clip.num_frames  # left out: the file's own


def test_frames_given_must_match_the_default_model(clip, manifest):
    if not manifest.models:
        pytest.skip("the manifest lists no shipped model")
    default = manifest.models[0]
    other = 8 - default.frames  # 3 <-> 5
    with pytest.raises(vs.Error, match=rf"^erdn_vs.deblur: model {default.name!r} is a frames={default.frames} "
                                       rf"model; pass frames={default.frames}"):
        deblur(clip, frames=other)


def test_no_model_and_no_shipped_model(clip, manifest):
    if manifest.models:
        pytest.skip("the manifest lists a shipped model, which is the default")
    with pytest.raises(vs.Error, match="^erdn_vs.deblur: no model given .* pass weights="):
        deblur(clip)


def test_bad_clips(weights):
    gray = core.std.BlankClip(format=vs.GRAY8, width=64, height=48)
    assert deblur(gray, weights=weights).format.id == vs.GRAY8  # accepted since issue 30: GRAY in, GRAY out
    a = core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, length=2)
    b = core.std.BlankClip(format=vs.YUV420P8, width=32, height=48, length=2)
    with pytest.raises(vs.Error, match="^erdn_vs.deblur: clip has a variable frame size"):
        deblur(core.std.Splice([a, b], mismatch=True), weights=weights)
    with pytest.raises(vs.Error, match="^erdn_vs.deblur: clip must be a vapoursynth.VideoNode"):
        deblur("video.mkv", weights=weights)


def test_good_arguments_build_a_graph_without_contacting_a_worker(clip, weights):
    # The session opens on the first frame request; building the graph needs no worker.
    out = deblur(clip, weights=weights, frames=3, tile=64, overlap=8, device="cuda:0", precision="fp16",
                 endpoint="ipc:///nonexistent/dir/w.sock", scene_change=False, autostart=False, timeout=5)
    assert (out.format.id, out.width, out.height, out.num_frames) == (vs.YUV420P8, 64, 48, 4)
    assert out.fps == clip.fps


def test_parse_errors_name_the_entry(tmp_path):
    data = yaml.safe_load((ROOT / "plugin_manifest.yaml").read_text())
    path = tmp_path / "m.yaml"

    def broken(mutate) -> str:
        d = yaml.safe_load(yaml.safe_dump(data))
        mutate(d)
        with pytest.raises(ManifestError) as e:
            parse_manifest(d, path)
        return str(e.value)

    assert "missing top-level 'worker'" in broken(lambda d: d.pop("worker"))
    assert "deblur.params.frames: the default does not pass" in broken(
        lambda d: d["functions"]["deblur"]["params"][3].update(default=4))
    assert "type must be one of" in broken(lambda d: d["functions"]["deblur"]["params"][1].update(type="string"))
    assert "models[0]: a model entry needs" in broken(lambda d: d.update(models=[{"name": "x", "file": "x"}]))


def test_model_entries_resolve_relative_to_the_manifest(tmp_path):
    data = yaml.safe_load((ROOT / "plugin_manifest.yaml").read_text())
    data["models"] = [{
        "name": "erdn-tiny-test", "file": "weights/tiny.safetensors", "sha256": "0" * 64, "preset": "tiny",
        "frames": 3, "training_data": "none", "quality": {"psnr_db": None}, "licence": "MIT",
    }]
    path = tmp_path / "plugin_manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    m = load_manifest(path)
    assert m.model("erdn-tiny-test").path == tmp_path / "weights" / "tiny.safetensors"
    assert m.model("erdn-tiny-test").frames == 3
    with pytest.raises(ValueError, match="known models: 'erdn-tiny-test'"):
        m.model("other")


def test_default_weights_is_the_first_model(tmp_path):
    from worker.registry import ModelNotFound, default_weights, file_sha256

    shipped = default_weights()
    assert shipped.name == load_manifest().models[0].name
    assert shipped.path == load_manifest().models[0].path and shipped.sha256 == file_sha256(shipped.path)
    for name in ("second", "first"):
        (tmp_path / f"{name}.safetensors").write_bytes(name.encode())
    path = tmp_path / "m.yaml"
    path.write_text("models:\n  - {name: first, file: first.safetensors}\n"
                    "  - {name: second, file: second.safetensors}\n")
    assert default_weights(path).path == tmp_path / "first.safetensors"
    path.write_text("models: []\n")
    with pytest.raises(ModelNotFound, match="lists no models"):
        default_weights(path)


def test_imports_stay_light():
    # The worker imports erdn_vs.protocol / erdn_vs.manifest: that must not pull in VapourSynth,
    # and nothing in erdn_vs may import torch.
    code = (
        "import sys, erdn_vs, erdn_vs.protocol, erdn_vs.manifest, erdn_vs.windows\n"
        "assert 'vapoursynth' not in sys.modules, 'vapoursynth imported'\n"
        "erdn_vs.manifest.load_manifest()\n"
        "import erdn_vs.client, erdn_vs.filter\n"
        "assert callable(erdn_vs.deblur)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
