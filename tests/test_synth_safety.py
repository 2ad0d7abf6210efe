"""`erdn synth` never mixes two runs in one folder, and warns about footage too slow to blur (issue 30, 5 and 7)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from erdn_vs.pipeline.tools import ffmpeg_exe
from training import synth

TINY = ["--clips", "1", "--test-clips", "0", "--frames", "2", "--size", "32x32", "--subframes", "3"]


def clip_dirs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*") if p.is_dir())


def test_a_non_empty_folder_is_refused_and_overwrite_clears_it(tmp_path, capsys):
    out = tmp_path / "data"
    assert synth.main([str(out), *TINY, "--clips", "2"]) == 0
    before = clip_dirs(out)
    assert len(before) == 2
    with pytest.raises(SystemExit) as e:
        synth.main([str(out), *TINY])
    assert str(e.value).startswith(f"erdn synth: {out} is not empty (erdn_synth.json, erdn_synth.yaml, ")
    assert "--overwrite" in str(e.value)
    assert clip_dirs(out) == before  # untouched
    assert synth.main([str(out), *TINY, "--overwrite"]) == 0
    assert len(clip_dirs(out)) == 1  # no stale clip of the first run


def test_overwrite_clears_only_a_dataset(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("mine\n")
    with pytest.raises(SystemExit, match="--overwrite clears only a dataset folder.*thesis.tex"):
        synth.main([str(out), *TINY, "--overwrite"])
    assert (out / "thesis.tex").read_text() == "mine\n"


def test_video_at_a_low_frame_rate_is_warned_about(tmp_path, capsys):
    video = tmp_path / "phone.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=25", "-frames:v", "12", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(video)], check=True)
    assert synth.main([str(tmp_path / "out"), "--video", str(video), "--frames", "2", "--subframes", "3",
                       "--size", "32x32", "--test-clips", "0"]) == 0
    err = capsys.readouterr().err
    assert f"erdn synth: warning: --video {video} is 25 fps; averaging 3 of its frames makes ghosted" in err
