"""The synthetic blur generator: determinism, pairing and blur statistics (linear-light averaging)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.data import find_videos
from training.data.images import linear_to_srgb, list_images, read_rgb, srgb_to_linear, write_rgb
from training.synth import SynthOptions, expose, main, render_still_clip, synthesize


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def small(out: Path, **kw) -> SynthOptions:
    base = dict(out=str(out), clips=2, test_clips=1, frames=3, width=40, height=32, subframes=5, seed=7)
    return SynthOptions(**(base | kw))


def test_srgb_round_trip() -> None:
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    assert srgb_to_linear(np.float32(0.5)) == pytest.approx(0.2140, abs=1e-4)


def test_expose_averages_in_linear_light_and_keeps_the_middle_subframe() -> None:
    rng = np.random.default_rng(0)
    sub = rng.random((7, 6, 5, 3), dtype=np.float32)
    blurry, sharp = expose(sub)
    np.testing.assert_allclose(srgb_to_linear(blurry), sub.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(srgb_to_linear(sharp), sub[3], atol=1e-5)
    # averaging sRGB values directly would give a different (darker-biased) frame
    assert np.abs(blurry - linear_to_srgb(sub).mean(axis=0)).max() > 0.01


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = synthesize(small(tmp_path / "a"), progress=False)
    b = synthesize(small(tmp_path / "b"), progress=False)
    c = synthesize(small(tmp_path / "c", seed=8), progress=False)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)


def test_output_is_a_paired_dataset_the_loaders_read(tmp_path: Path) -> None:
    root = synthesize(small(tmp_path / "d"), progress=False)
    train, test = find_videos(root, "train"), find_videos(root, "test")
    assert [v.name for v in train] == ["clip_0000", "clip_0001"] and [v.name for v in test] == ["clip_0002"]
    for v in train + test:
        assert len(v) == 3
        for b, s in zip(v.blur, v.sharp, strict=True):
            assert b.name == s.name
            assert read_rgb(b).shape == read_rgb(s).shape == (32, 40, 3)
    assert (root / "erdn_synth.yaml").is_file()


def test_rendered_clip_blurry_frame_is_the_linear_mean_of_its_subframes(tmp_path: Path) -> None:
    opts = small(tmp_path / "e", noise=0.0, frames=2, motion=2.0)
    from training.synth import load_stills

    sub = render_still_clip(np.random.default_rng(1), load_stills(opts), opts)
    assert sub.shape == (2 * 5, 32, 40, 3)
    # there is motion: sub-frames differ, so the blurry frame differs from the sharp one
    assert np.abs(sub[0] - sub[4]).mean() > 1e-3
    root = synthesize(opts, progress=False)
    clip = find_videos(root, "train")[0]
    rendered = render_still_clip(np.random.default_rng([opts.seed, 0]), load_stills(opts), opts)
    for k in range(2):
        blurry_png = read_rgb(clip.blur[k]).astype(np.float32) / 255
        sharp_png = read_rgb(clip.sharp[k]).astype(np.float32) / 255
        mean = linear_to_srgb(rendered[k * 5 : (k + 1) * 5].mean(axis=0))
        assert np.abs(blurry_png - mean).max() <= 0.5 / 255 + 1e-6  # equal up to 8-bit rounding
        assert np.abs(sharp_png - linear_to_srgb(rendered[k * 5 + 2])).max() <= 0.5 / 255 + 1e-6


def test_own_high_frame_rate_frames(tmp_path: Path) -> None:
    """A frame folder of a moving bar: every blurry frame is the linear mean of 3 consecutive frames."""
    src = tmp_path / "hfr"
    frames = []
    for i in range(12):
        img = np.full((32, 48, 3), 30, np.uint8)
        img[:, 4 * i : 4 * i + 6] = 230
        frames.append(img)
        write_rgb(src / f"{i:04d}.png", img)
    out = tmp_path / "from_video"
    rc = main([str(out), "--video", str(src), "--frames", "2", "--subframes", "3", "--test-clips", "1",
               "--size", "48x32", "--noise", "0"])  # fmt: skip
    assert rc == 0
    train = find_videos(out, "train")
    assert len(train) == 1 and len(find_videos(out, "test")) == 1  # 12 frames = 2 clips of 2 x 3
    for k in range(2):
        expected = linear_to_srgb(
            np.mean([srgb_to_linear(f.astype(np.float32) / 255) for f in frames[3 * k : 3 * k + 3]], axis=0)
        )
        got = read_rgb(list_images(out / "train" / "clip_0000" / "blur")[k]).astype(np.float32) / 255
        assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(read_rgb(list_images(out / "train" / "clip_0000" / "sharp")[k]), frames[3 * k + 1])


def test_own_video_file_through_ffmpeg(tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    path = tmp_path / "hfr.mkv"
    writer = imageio_ffmpeg.write_frames(str(path), (48, 32), codec="ffv1", pix_fmt_out="bgr0", macro_block_size=1)
    writer.send(None)
    for i in range(6):
        img = np.full((32, 48, 3), 40, np.uint8)
        img[:, 6 * i : 6 * i + 8] = 220
        writer.send(np.ascontiguousarray(img))
    writer.close()
    out = tmp_path / "v"
    assert main([str(out), "--video", str(path), "--frames", "1", "--subframes", "3", "--test-clips", "1",
                 "--size", "48x32", "--noise", "0"]) == 0  # fmt: skip
    sharp = read_rgb(list_images(out / "train" / "clip_0000" / "sharp")[0])
    assert sharp.shape == (32, 48, 3)
    assert abs(int(sharp[0, 6 * 1 + 3, 0]) - 220) <= 3  # the middle sub-frame (frame 1): bar at x 6..13


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="leaves no training clip"):
        synthesize(small(tmp_path / "f", clips=0, test_clips=1), progress=False)
    with pytest.raises(SystemExit, match="holds no images"):
        synthesize(small(tmp_path / "g", stills=(str(tmp_path),)), progress=False)


def test_noise_and_jpeg_touch_only_the_blurry_frames(tmp_path: Path) -> None:
    clean = synthesize(small(tmp_path / "clean", noise=0.0), progress=False)
    rough = synthesize(small(tmp_path / "rough", noise=0.02, jpeg=30), progress=False)
    a, b = find_videos(clean, "train")[0], find_videos(rough, "train")[0]
    assert np.array_equal(read_rgb(a.sharp[1]), read_rgb(b.sharp[1]))
    assert np.abs(read_rgb(a.blur[1]).astype(int) - read_rgb(b.blur[1]).astype(int)).mean() > 1.0


def test_hand_shake_nearly_stops_at_each_turn() -> None:
    """Shake speed swings from near zero to its peak within a 16-frame clip: blur varies frame to frame."""
    from training.synth import hand_shake

    times = np.linspace(0, 16, 16 * 9)
    for seed in range(8):
        path = hand_shake(np.random.default_rng(seed), times, amplitude=6.0)
        speed = np.linalg.norm(np.diff(path, axis=0), axis=1)
        assert np.abs(path).max() <= 6.0 * 1.3 + 1e-9  # main tremor up to the amplitude, the cross one up to 0.3 of it
        assert speed.min() < 0.35 * speed.max(), seed


def test_shaken_clips_vary_their_blur_more_than_steady_pans(tmp_path: Path) -> None:
    """Per-frame blur (first vs last sub-frame of each exposure) varies more within a shaken clip."""
    from training.synth import load_stills

    def least_over_most(shake: float) -> float:
        opts = small(tmp_path, shake=shake, sprites=0, noise=0.0, frames=12, width=64, height=64)
        stills = load_stills(opts)
        ratios = []
        for seed in range(6):
            sub = render_still_clip(np.random.default_rng(seed), stills, opts)
            blur = np.array([np.abs(sub[k * 5] - sub[k * 5 + 4]).mean() for k in range(12)])
            ratios.append(blur.min() / blur.max())
        return float(np.mean(ratios))

    shaken, steady = least_over_most(1.0), least_over_most(0.0)
    assert shaken < 0.8 * steady, (shaken, steady)


def test_shake_zero_is_the_steady_pan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--shake 0 neither shakes nor draws shake parameters, so data made before --shake existed is remade as it was."""
    import training.synth as synth

    def no_shake(*args, **kwargs):
        raise AssertionError("hand_shake called")

    monkeypatch.setattr(synth, "hand_shake", no_shake)
    stills = synth.load_stills(small(tmp_path))
    render_still_clip(np.random.default_rng(3), stills, small(tmp_path, shake=0.0, frames=2))
    with pytest.raises(AssertionError, match="hand_shake called"):
        render_still_clip(np.random.default_rng(3), stills, small(tmp_path, shake=1.0, frames=2))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--shake", "-1"])


# ----------------------------------------------------------------------------- recipe v3


def v3_small(out: Path, **kw) -> SynthOptions:
    """The v3 recipe at a tiny size (48x32, 3 frames): every realism option on."""
    from training.synth import RECIPES

    v3 = dict(RECIPES["v3"])
    return small(out, **(v3 | {"val_clips": 1, "width": 48, "height": 32} | kw))


def test_v3_is_deterministic_and_has_a_val_split_the_loaders_read(tmp_path: Path) -> None:
    a = synthesize(v3_small(tmp_path / "a"), progress=False)
    b = synthesize(v3_small(tmp_path / "b"), progress=False)
    assert tree_digest(a) == tree_digest(b)
    train, val, test = (find_videos(a, s) for s in ("train", "val", "test"))
    assert [v.name for v in train] == ["clip_0000", "clip_0001"]
    assert [v.name for v in val] == ["clip_0002"] and [v.name for v in test] == ["clip_0003"]
    assert len(find_videos(a, "all")) == 4
    info = json.loads((a / "erdn_synth.json").read_text())
    assert [c["split"] for c in info["clips"]] == ["train", "train", "val", "test"]
    assert info["options"]["recipe"] == "v2" and info["options"]["val_clips"] == 1  # recorded as given


def test_val_and_test_render_only_photographs_train_never_sees(tmp_path: Path) -> None:
    from training import photos

    root = synthesize(v3_small(tmp_path, clips=6, val_clips=3, test_clips=3, procedural=0.0, highlights=0.0),
                      progress=False)
    info = json.loads((root / "erdn_synth.json").read_text())
    held = set(info["photographs"]["val"])
    assert held == set(info["photographs"]["test"]) and held
    assert held.isdisjoint(info["photographs"]["train"])
    assert held == photos.held_out_names(sorted(held | set(info["photographs"]["train"])), 0.25)
    for clip in info["clips"]:
        used = {clip["background"]} | {s["source"] for s in clip["sprites"]}
        assert used <= (held if clip["split"] != "train" else set(info["photographs"]["train"])), clip
    # a stereo pair is one scene: both halves on the same side
    assert photos.group_key("motorcycle_left.png") == photos.group_key("motorcycle_right.png")


def test_reserved_evaluation_photographs_are_never_used_for_training(tmp_path: Path) -> None:
    import shutil

    from training import photos

    reserved = photos.reserved_photo_paths()
    if not reserved:
        pytest.skip("neither scikit-learn nor matplotlib sample photographs installed")
    digests = photos.reserved_digests()
    for images in ("photos", "all"):
        assert not {photos._digest(p) for p in photos.image_paths(images)} & digests
    sneaky = tmp_path / "mine"
    sneaky.mkdir()
    shutil.copy(reserved[0], sneaky / "holiday.jpg")  # a renamed copy is caught by its content
    with pytest.raises(SystemExit, match="reserved for evaluation"):
        synthesize(small(tmp_path / "out", stills=(str(sneaky),)), progress=False)


def test_zoom_changes_the_scale_over_a_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.synth as synth

    scales: list[np.ndarray] = []
    real = synth.sample_grid
    monkeypatch.setattr(synth, "sample_grid", lambda hw, src, c, a, s: scales.append(s) or real(hw, src, c, a, s))
    stills = synth.load_stills(small(tmp_path))

    def mean_log_zoom(zoom: float) -> float:
        spans = []
        for seed in range(6):
            scales.clear()
            render_still_clip(np.random.default_rng(seed), stills, small(tmp_path, zoom=zoom, frames=8, sprites=0))
            spans.append(abs(math.log(scales[0][-1] / scales[0][0])))
        return float(np.mean(spans))

    assert mean_log_zoom(0.05) > 4 * mean_log_zoom(0.0)


def test_several_exposure_lengths_in_one_dataset(tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    assert main([str(out), "--subframes", "3,5,7", "--clips", "6", "--test-clips", "0", "--frames", "2",
                 "--size", "32x32", "--noise", "0", "--seed", "1"]) == 0  # fmt: skip
    info = json.loads((out / "erdn_synth.json").read_text())
    assert info["command"][:3] == ["erdn", "synth", str(out)]
    assert info["options"]["subframe_choices"] == [3, 5, 7] and info["options"]["subframes"] == 5
    assert len({c["subframes"] for c in info["clips"]}) >= 2
    opts = small(tmp_path, frames=2)
    from training.synth import load_stills

    assert render_still_clip(np.random.default_rng(0), load_stills(opts), opts, subframes=7).shape[0] == 2 * 7


def test_highlights_exceed_white_and_clip_only_after_the_exposure(tmp_path: Path) -> None:
    # a light of 4x white crossing 5 pixels in 5 sub-frames: averaged first, its streak stays at 0.8 of white
    sub = np.zeros((5, 1, 5, 3), np.float32)
    for t in range(5):
        sub[t, 0, t] = 4.0
    blurry, _ = expose(sub)
    np.testing.assert_allclose(srgb_to_linear(blurry), 0.8, atol=1e-5)  # clipping first would give 0.2
    from training.synth import load_stills

    opts = small(tmp_path, highlights=1.0, frames=2, sprites=4, width=64, height=64)
    stills = load_stills(opts)
    record: dict = {}
    clip = render_still_clip(np.random.default_rng(2), stills, opts, record=record)
    assert record["highlights"] is not None and clip.max() > 1.0
    root = synthesize(opts, progress=False)
    sharp = read_rgb(find_videos(root, "train")[0].sharp[0])
    assert sharp.max() == 255


def test_sensor_noise_is_added_in_linear_light_before_the_camera_response() -> None:
    from training.camera import sensor_noise

    rng = np.random.default_rng(0)
    flat = np.ones((64, 64, 3), np.float32)
    dark = linear_to_srgb(sensor_noise(flat * 0.01, rng, gain=8.0))
    bright = linear_to_srgb(sensor_noise(flat * 0.5, rng, gain=8.0))
    # the sRGB curve is steep in the dark: noise added before it is far stronger in shadows there,
    # where noise added after it (in sRGB) would be alike everywhere
    assert dark.std() > 2.0 * bright.std() > 0
    assert np.array_equal(sensor_noise(flat, rng, gain=8.0), flat)  # saturated pixels stay clean


def test_camera_noise_and_h264_touch_only_the_blurry_frames(tmp_path: Path) -> None:
    clean = synthesize(small(tmp_path / "clean", noise=0.0), progress=False)
    rough = synthesize(small(tmp_path / "rough", noise=0.0, camera_noise=8.0, h264=40), progress=False)
    info = json.loads((rough / "erdn_synth.json").read_text())
    assert all(c["h264_crf"] >= 18 and c["sensor_noise_gain"] > 0 for c in info["clips"])
    a, b = find_videos(clean, "train")[0], find_videos(rough, "train")[0]
    assert np.array_equal(read_rgb(a.sharp[1]), read_rgb(b.sharp[1]))
    assert np.abs(read_rgb(a.blur[1]).astype(int) - read_rgb(b.blur[1]).astype(int)).mean() > 0.5


@pytest.mark.parametrize("kind", ["noise", "stripes", "checker", "shapes", "glyphs"])
def test_procedural_textures_are_seeded_and_have_edges(kind: str) -> None:
    from training.textures import texture

    _, a = texture(np.random.default_rng(3), 96, kind)
    _, b = texture(np.random.default_rng(3), 96, kind)
    assert a.shape == (96, 96, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    edge = max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max())
    assert edge > 0.1 and a.std() > 0.02  # not flat: somewhere a real edge


def test_parallax_sprites_are_drawn_far_to_near_at_several_speeds(tmp_path: Path) -> None:
    from training.synth import load_stills

    opts = small(tmp_path, parallax=True, sprites=4, frames=2)
    stills = load_stills(opts)
    depths, speeds = [], []
    for seed in range(8):
        record: dict = {}
        render_still_clip(np.random.default_rng(seed), stills, opts, record=record)
        d = [s["depth"] for s in record["sprites"]]
        assert d == sorted(d, reverse=True)  # composited far first, so near ones cover them
        depths += d
        speeds += [s["speed"] for s in record["sprites"]]
    assert min(depths) < 0.6 and max(depths) > 0.8 and min(speeds) < 3 and max(speeds) > 8


def test_recipe_v3_sets_defaults_that_explicit_options_override(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.synth as synth

    captured: list[SynthOptions] = []
    monkeypatch.setattr(synth, "synthesize", lambda opts, **kwargs: captured.append(opts) or "out")

    def parsed(*argv: str) -> SynthOptions:
        assert main(["out", *argv]) == 0
        return captured[-1]

    v3 = parsed("--recipe", "v3")
    assert v3.subframe_choices == (5, 9, 15) and v3.subframes == 9 and v3.images == "all" and v3.parallax
    assert v3.camera_noise > 0 and v3.jpeg > 0 and v3.h264 > 0 and v3.holdout > 0 and v3.noise == 0
    own = parsed("--recipe", "v3", "--subframes", "9", "--jpeg", "0", "--no-parallax", "--holdout", "0")
    assert own.subframe_choices == () and own.jpeg == 0 and not own.parallax and own.holdout == 0
    assert parsed().shake == 1.0 and parsed("--recipe", "v1").shake == 0.0 and parsed().images == "photos"
    video = parsed("--recipe", "v3", "--video", "hfr.mp4")  # a video's frames are its sub-frames: one count
    assert video.subframe_choices == () and video.subframes == 9 and video.camera_noise > 0


def test_images_eval_makes_a_test_only_set_from_reserved_photographs(tmp_path: Path) -> None:
    from training import photos

    if len([p for p in photos.reserved_photo_paths() if min(read_rgb(p).shape[:2]) >= 256]) < 2:
        pytest.skip("scikit-learn/matplotlib sample photographs not installed")
    out = tmp_path / "fresh"
    assert main([str(out), "--recipe", "v3", "--images", "eval", "--procedural", "0", "--clips", "0",
                 "--test-clips", "2", "--frames", "2", "--size", "48x32", "--seed", "11"]) == 0  # fmt: skip
    assert [v.name for v in find_videos(out, "test")] == ["clip_0000", "clip_0001"]
    assert not (out / "train").exists() and not (out / "val").exists()
    info = json.loads((out / "erdn_synth.json").read_text())
    reserved = {p.name for p in photos.reserved_photo_paths()}
    assert set(info["photographs"]) == {"test"} and set(info["photographs"]["test"]) <= reserved
    training_names = set(photos.SKIMAGE_ALL)
    for clip in info["clips"]:
        used = {clip["background"]} | {s["source"] for s in clip["sprites"]} - {"light"}
        assert used <= reserved and not used & training_names, clip
    with pytest.raises(SystemExit, match="never training data"):
        main([str(tmp_path / "bad"), "--images", "eval", "--clips", "2", "--test-clips", "1"])
