"""training.core_hours: validation PSNR against compute, read from erdn train's log.csv."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import core_hours

HEADER = ("iteration,epoch,lr,crop,total,rec,grad,align,val_psnr,val_ssim,val_psnr_raw,seconds,train_seconds,"
          "core_seconds\n")


def _log(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def test_validation_rows_in_core_hours(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.csv", [
        "50,0,0.001,96,0.16,0.03,0.09,0.05,,,,160.7,154.6,33.5",
        "500,,,,,,,,25.26,0.71,25.39,,1700.0,360.0",
        "1000,,,,,,,,25.27,0.72,25.33,,2900.0,720.0",
        "1000,,,,,,,,25.27,0.72,25.33,,2900.0,720.0",  # a resumed run may log a validation twice
    ])
    points = core_hours.read_validation(log)
    assert points == [core_hours.ValPoint(500, 0.1, 25.26, 25.39), core_hours.ValPoint(1000, 0.2, 25.27, 25.33)]


def test_plot_and_table(tmp_path: Path, capsys) -> None:
    a = _log(tmp_path / "a.csv", ["500,,,,,,,,25.26,0.71,25.39,,1700.0,360.0"])
    b = _log(tmp_path / "b.csv", ["250,,,,,,,,25.28,0.71,,,1100.0,1080.0"])  # no EMA: no raw column value
    png = tmp_path / "plot.png"
    assert core_hours.main([f"{a}:3-frame", f"{b}:5-frame", "--blurry", "25.2", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| 3-frame | 500 | 0.100 | 25.260 | 25.390 |" in out and "| 5-frame | 250 | 0.300 | 25.280 |  |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_log_without_core_seconds_is_one_clear_error(tmp_path: Path, capsys) -> None:
    old = tmp_path / "old.csv"
    old.write_text("iteration,total,val_psnr\n500,,25.3\n")
    with pytest.raises(SystemExit):
        core_hours.main([str(old)])
    assert "has no core_seconds column; it predates compute accounting" in capsys.readouterr().err


def test_every_run_is_drawn_and_the_zoom_panel_keeps_the_later_points(tmp_path: Path) -> None:
    runs = {f"run {i}": [core_hours.ValPoint(500, 0.5 * i, 25.3 + 0.01 * i, None)] for i in range(12)}
    png = tmp_path / "plot.png"
    assert core_hours.plot(runs, png, blurry=25.2, zoom_from=3.0) == [12, 6]  # 0.5 * i >= 3 for i = 6..11
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_until_keeps_the_points_up_to_that_compute(tmp_path: Path, capsys) -> None:
    log = _log(tmp_path / "log.csv", ["500,,,,,,,,25.26,0.71,25.39,,1700.0,360.0",
                                      "1000,,,,,,,,25.27,0.72,25.33,,2900.0,7200.0"])
    assert core_hours.main([f"{log}:run", "--until", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "| run | 500 |" in out and "| run | 1000 |" not in out
