"""Bad input to any `erdn` command ends in one line that names the problem and the fix, never a traceback.

Each case runs the real command in a subprocess, the way a user types it. The dispatcher's own
net (interrupts, missing optional packages, paths the OS refuses) is also checked in-process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from erdn_vs import cli
from erdn_vs.pipeline import encode, tools


def erdn(*args: str, python_prelude: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    code = f"{python_prelude}\nimport sys\nfrom erdn_vs.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_line(r: subprocess.CompletedProcess, command: str) -> str:
    """The run failed with exactly one line on stderr, from ``erdn COMMAND``; returns that line."""
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"erdn {command}: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def short_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "ten.mkv"
    subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=25", "-frames:v", "10", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    return path


def test_deblur_a_frame_range_past_the_end(short_video, tmp_path):
    line = one_line(erdn("deblur", str(short_video), "-o", str(tmp_path / "o.mkv"), "--frames", "10:"), "deblur")
    assert "starts past the end" in line and "has 10 frames" in line and "START below 10" in line


def test_deblur_an_output_ffmpeg_cannot_write_names_ffmpeg_not_vspipe(tmp_path):
    """ffmpeg refuses the output; vspipe then fails on the closed pipe, but the error is ffmpeg's."""
    vpy = tmp_path / "blank.vpy"
    vpy.write_text("import vapoursynth as vs\nvs.core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, "
                   "length=50).set_output()\n")
    out = tmp_path / "out.mkv"
    ff = [tools.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "yuv4mpegpipe", "-i", "pipe:0",
          "-c:v", "no-such-encoder", str(out)]
    with pytest.raises(tools.RenderError) as e:
        encode.pipe_into_ffmpeg(vpy, ["-c", "y4m"], ff, source=vpy, output=out)
    message = str(e.value)
    assert message.startswith(f"encoding to {out} failed (ffmpeg exit") and "\n" not in message
    assert "Encoder not found" in message and "--codec" in message


@pytest.mark.slow  # imports torch in a fresh process
def test_convert_a_file_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk\n" * 20)
    line = one_line(erdn("convert", str(junk), str(tmp_path / "out.safetensors")), "convert")
    assert str(junk) in line and "not a PyTorch checkpoint" in line
    assert not (tmp_path / "out.safetensors").exists()


def test_a_missing_optional_package_names_it_and_the_install_command(tmp_path):
    block_torch = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
    """)
    r = erdn("export", str(tmp_path / "w.safetensors"), "--onnx", str(tmp_path / "o"), python_prelude=block_torch)
    line = one_line(r, "export")
    assert "'torch'" in line and "pip install 'erdn-vs[worker]'" in line


@pytest.mark.slow  # imports torch in a fresh process
def test_a_path_the_os_refuses_is_one_line(tmp_path):
    """`erdn synth` into a place no directory can be made (under /proc): the OS error, with the path."""
    line = one_line(erdn("synth", "/proc/erdn-no-such/out", "--clips", "1", "--test-clips", "0",
                         "--size", "32x32"), "synth")
    assert "/proc/erdn-no-such" in line and "check the path" in line


def fake_command(monkeypatch, error: BaseException) -> None:
    module = types.ModuleType("erdn_fake_command")

    def main(argv):
        raise error

    module.main = main
    monkeypatch.setitem(sys.modules, "erdn_fake_command", module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", ("erdn_fake_command", "a test command"))


def test_an_interrupt_is_one_line_and_exit_130(monkeypatch, capsys):
    fake_command(monkeypatch, KeyboardInterrupt())
    assert cli.main(["fake"]) == 130
    assert capsys.readouterr().err == "erdn fake: interrupted\n"


def test_an_os_error_names_the_path(monkeypatch, capsys):
    fake_command(monkeypatch, PermissionError(13, "Permission denied", "/data/clips"))
    assert cli.main(["fake"]) == 1
    assert capsys.readouterr().err == "erdn fake: /data/clips: Permission denied; check the path and its permissions\n"


def test_a_missing_module_that_is_not_optional_is_a_bug_and_keeps_its_traceback(monkeypatch):
    fake_command(monkeypatch, ModuleNotFoundError("No module named 'erdn_typo'", name="erdn_typo"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["fake"])


@pytest.mark.slow  # imports torch in a fresh process
def test_train_a_config_that_is_not_yaml(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  preset: [lite\n")
    line = one_line(erdn("train", str(config)), "train")
    assert f"config {config} is not valid YAML at line" in line


@pytest.mark.parametrize("query", ["status", "stop"])
def test_worker_query_with_an_endpoint_that_cannot_work(query):
    line = one_line(erdn("worker", query, "--endpoint", "ipc:///tmp/" + "x" * 120), f"worker {query}")
    assert "tcp://127.0.0.1:PORT" in line


@pytest.mark.parametrize("query", ["status", "stop"])
def test_worker_query_without_a_worker(query, tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    line = one_line(erdn("worker", query, "--endpoint", endpoint, "--timeout", "0.5"), f"worker {query}")
    assert line == (f"erdn worker {query}: no worker answers at {endpoint} within 0.5 s; start one with "
                    f"`erdn worker --endpoint {endpoint}` (erdn_vs.deblur() starts one itself on first use)")


def test_worker_negative_threads():
    line = one_line(erdn("worker", "--threads", "-1", "--endpoint", "ipc:///tmp/erdn-never.sock"), "worker")
    assert "--threads must be 0" in line


@pytest.mark.slow  # imports torch in a fresh process
def test_synth_from_a_file_that_is_not_a_video(tmp_path):
    junk = tmp_path / "clip.mp4"
    junk.write_text("not a video\n")
    line = one_line(erdn("synth", str(tmp_path / "out"), "--video", str(junk), "--clips", "1"), "synth")
    assert f"cannot read --video {junk} as a video" in line


def test_an_os_error_with_a_long_message_is_still_one_line(monkeypatch, capsys):
    fake_command(monkeypatch, OSError("Could not load meta information\n=== stderr ===\nffmpeg said things"))
    assert cli.main(["fake"]) == 1
    assert capsys.readouterr().err == "erdn fake: Could not load meta information\n"
