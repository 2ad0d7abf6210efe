"""The file pipeline of ``erdn deblur``: a video file in, a restored video file out.

- ``tools``: where ffmpeg and vspipe are, the environment vspipe runs in, ``RenderError``.
- ``source``: what the input file holds (bestsource's view, its streams and tags, its timestamps),
  checked before anything renders.
- ``scenes``: the frames that start a new scene (detected, read from a file, or none).
- ``graph``: the .vpy script that reads, deblurs and cuts the clip (``--script`` prints it), and
  the format vspipe pipes it in.
- ``encode``: the ffmpeg command (video encoder, audio, metadata), and vspipe piped into it.
- ``output``: the output file: checked first, written under a partial name, renamed when complete.
- ``render``: one plain render of a file or a frame range, start to finish.

``erdn_vs.deblur_cli`` (the ``erdn deblur`` command) calls ``render`` or ``erdn_vs.farm``; both use
the modules here, and nothing here imports either of them. Imports VapourSynth, never torch or Ray.
"""
