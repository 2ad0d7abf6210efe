"""``erdn deblur --ray``: one video rendered in chunks on a Ray cluster, joined without re-encoding.

- ``plan``: which frames each chunk renders (scene cuts, clip edges); pure Python.
- ``store``: finished chunks on disk, keyed by the input and the settings, so a rerun resumes.
- ``renderer``: the Ray actor that holds a warm ``erdn worker`` and renders chunks.
- ``driver``: connects to Ray, schedules the chunks, shows progress, joins the result.

Nothing here is imported by ``import erdn_vs`` or by a VapourSynth script; only ``renderer`` and
``driver`` import Ray.
"""
