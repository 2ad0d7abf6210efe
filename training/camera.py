"""What a real camera adds to the blurry frame: clipped highlights, sensor noise, compression.

Order, as in a camera (RSBlur, Rim et al. ECCV 2022): the scene in linear light may be brighter
than the sensor's white (values above 1); the exposure averages it over time; the sensor clips at 1
(so a bright light smeared by motion stays white along its streak); shot and read noise are added in
linear light (Poisson-Gaussian); then the camera response (sRGB) and compression (JPEG or H.264).
Noise parameters are RSBlur's camera: shot-noise gain 1.0e-4 and read-noise sigma 9.15e-4 in [0, 1]
units, scaled by a per-clip gain (higher ISO).
"""

from __future__ import annotations

import io
import subprocess

import numpy as np

#: RSBlur camera, linear light in [0, 1]: variance = SHOT_GAIN * x + READ_SIGMA**2.
SHOT_GAIN = 1.0e-4
READ_SIGMA = 9.15e-4


def over_expose(linear: np.ndarray, gain: float, boost: float) -> np.ndarray:
    """A scene brighter than the sensor's white: everything times ``gain``, and pixels that are
    already near white in the source (>= 0.98, where the photo itself clipped) get ``+boost``
    (RSBlur's saturation synthesis adds U(0.25, 1.75) there). (H, W, 3) linear in, same out, may exceed 1.
    """
    out = linear * np.float32(gain)
    if boost > 0:
        near_white = (linear.max(axis=2, keepdims=True) >= 0.98).astype(np.float32)
        out = out + np.float32(boost) * near_white
    return out.astype(np.float32)


def sensor_noise(linear: np.ndarray, rng: np.random.Generator, gain: float) -> np.ndarray:
    """Poisson-Gaussian noise in linear light, after the sensor clipped at 1.

    ``linear``: (H, W, 3), clipped to [0, 1] first. Per pixel, sigma = sqrt(gain * SHOT_GAIN * x +
    (gain * READ_SIGMA)**2): a higher ``gain`` (ISO) scales the shot-noise gain and the read-noise sigma
    alike. Saturated pixels (x >= 1) stay noise-free, as RSBlur keeps them.
    """
    x = np.clip(linear, 0.0, 1.0)
    sigma = np.sqrt(gain * SHOT_GAIN * x + (gain * READ_SIGMA) ** 2)
    noisy = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return np.where(x >= 1.0, 1.0, np.clip(noisy, 0.0, 1.0)).astype(np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 through JPEG at ``quality`` (Pillow, 4:2:0) and back."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def h264(frames: np.ndarray, crf: int) -> np.ndarray:
    """(N, H, W, 3) uint8 through H.264 (libx264, yuv420p, one thread, so it is deterministic) and back.

    Odd sizes are padded by edge repetition for 4:2:0 and cropped back.
    """
    import imageio_ffmpeg

    n, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    padded = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    common = [ffmpeg, "-hide_banner", "-loglevel", "error", "-threads", "1"]
    encoded = subprocess.run(
        common + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pw}x{ph}", "-r", "30", "-i", "pipe:0",
                  "-c:v", "libx264", "-preset", "veryfast", "-crf", str(int(crf)), "-pix_fmt", "yuv420p",
                  "-x264-params", "threads=1", "-f", "h264", "pipe:1"],
        input=np.ascontiguousarray(padded).tobytes(), capture_output=True, check=True,
    ).stdout
    decoded = subprocess.run(
        common + ["-f", "h264", "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
        input=encoded, capture_output=True, check=True,
    ).stdout
    out = np.frombuffer(decoded, np.uint8).reshape(-1, ph, pw, 3)
    if out.shape[0] != n:
        raise RuntimeError(f"H.264 round trip returned {out.shape[0]} frames for {n}")
    return np.ascontiguousarray(out[:, :h, :w])
