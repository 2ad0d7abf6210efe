"""Drive the real vspreview (from PyPI) through what a user does, headless, and record what it showed.

    python tests/vspreview_driver.py OUT_DIR SEEK_TO SCRIPT.vpy [key=value ...]

Runs vspreview's own command-line entry point (``vspreview SCRIPT.vpy key=value ...``) in this
process. Once its window is up: the frame it shows first, then a seek to frame SEEK_TO (the call
its timeline makes when clicked), then a script reload (its Ctrl+R), then a screenshot of the
window. After each step OUT_DIR gets the frame on display as a PNG (the pixmap in vspreview's
graphics scene) and OUT_DIR/steps.json what was shown and the worker's counters, read from the
endpoint given as ``endpoint=...`` (through erdn_vs.client, which imports no torch).

The one change to vspreview: its QApplication is a subclass that queues these steps when its
event loop starts. The platform is Qt's choice (``QT_QPA_PLATFORM``: xcb under Xvfb, or offscreen).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from PyQt6.QtCore import QTimer
from PyQt6.QtGui import QGuiApplication, QImage
from PyQt6.QtWidgets import QApplication
from vspreview import init

WINDOW_SIZE = (960, 600)
WATCHDOG_MS = 300_000  # vspreview never runs longer than this, whatever happens


def worker_stats(endpoint: str | None) -> dict:
    if not endpoint:
        return {}
    from erdn_vs.client import WorkerClient

    with WorkerClient(endpoint, autostart=False, timeout=30) as client:
        s = client.stats()
    keys = ("frames_served", "stage1_evals", "stage2_evals", "output_cache_hits", "sessions", "pid")
    return {k: s[k] for k in keys}


def main(argv: list[str]) -> int:
    out, seek_to, vspreview_args = Path(argv[0]), int(argv[1]), argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    endpoint = next((a.split("=", 1)[1] for a in vspreview_args if a.startswith("endpoint=")), None)
    record: dict = {"steps": [], "error": None}

    def shown(step: str) -> None:
        window = init.main.main_window
        output = window.current_output
        image = output.graphics_scene_item.pixmap().toImage().convertToFormat(QImage.Format.Format_RGB888)
        name = f"{step}.png"
        if not image.save(str(out / name)):
            raise RuntimeError(f"could not write {out / name}")
        record["steps"].append({"step": step, "frame": int(output.last_showed_frame), "image": name,
                                "size": [image.width(), image.height()], "stats": worker_stats(endpoint)})

    def run_steps() -> None:
        try:
            window = init.main.main_window
            record["platform"] = QGuiApplication.platformName()
            window.resize(*WINDOW_SIZE)
            shown("open")
            window.switch_frame(seek_to)
            QApplication.processEvents()
            shown("seek")
            window.reload_script()
            QApplication.processEvents()
            shown("reload")
            if not window.grab().save(str(out / "screenshot.png")):
                raise RuntimeError("could not write the screenshot")
            record["screenshot"] = "screenshot.png"
        except Exception:  # noqa: BLE001 - recorded for the test to show, then vspreview closes
            record["error"] = traceback.format_exc()
        finally:
            (out / "steps.json").write_text(json.dumps(record, indent=2))
            QApplication.exit(1 if record["error"] else 0)

    class DrivenApplication(QApplication):
        def exec(self) -> int:
            QTimer.singleShot(0, run_steps)
            QTimer.singleShot(WATCHDOG_MS, lambda: QApplication.exit(3))
            return super().exec()

    init.QApplication = DrivenApplication
    rc = init.main(vspreview_args, no_exit=True)
    if not (out / "steps.json").exists():  # vspreview returned before the steps ran (a script error, say)
        record["error"] = f"vspreview exited with {rc} before the window was driven"
        (out / "steps.json").write_text(json.dumps(record, indent=2))
    return 0 if rc == 0 and not record["error"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
