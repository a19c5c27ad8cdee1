import collections
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from mineralnet.data import (
    SUBSETS, DataError, duplicate_report, load_image, make_split, open_rgb, parse_ratios, read_split, scan_dataset,
    write_split,
)
from mineralnet.data.demo import make_specimen
from mineralnet.data.pipeline import AugmentConfig, class_weights, make_dataset
from mineralnet.data.split import duplicate_groups

from helpers import MINET, ORIENTED, requires_minet, write_decode_cases


def write_dataset(root, per_class=10, classes=("alpha", "beta", "gamma"), size=24):
    rng = np.random.default_rng(0)
    for index, label in enumerate(classes):
        os.makedirs(root / label, exist_ok=True)
        for number in range(per_class):
            Image.fromarray(make_specimen(index, size, rng)).save(root / label / f"{number:03d}.png")
    return root


def test_split_is_deterministic_stratified_and_disjoint(tmp_path):
    root = write_dataset(tmp_path / "data", per_class=20)
    _, samples, _ = scan_dataset(str(root))
    first, again, other = make_split(samples, seed=3), make_split(samples, "6:1:1:2", seed=3), make_split(samples, seed=4)
    assert first == again  # 6:1:1:2 is the default
    assert first != other
    counts = collections.Counter((r["label"], r["subset"]) for r in first)
    for label in ("alpha", "beta", "gamma"):
        assert tuple(counts[(label, s)] for s in SUBSETS) == (12, 2, 2, 4)
    assert len({r["path"] for r in first}) == len(first) == 60  # every file exactly once
    three = collections.Counter((r["label"], r["subset"]) for r in make_split(samples, "6:2:2", seed=3))
    for label in ("alpha", "beta", "gamma"):  # a three-part ratio is train:val:test, without calib
        assert tuple(three[(label, s)] for s in SUBSETS) == (12, 4, 0, 4)
    no_calib = make_split(samples, "6:2:0:2", seed=3)
    assert no_calib == make_split(samples, "6:2:2", seed=3)


def test_bad_split_ratios_raise_one_clear_line():
    assert parse_ratios("6:1:1:2") == pytest.approx((0.6, 0.1, 0.1, 0.2))
    assert parse_ratios("0.6,0.2,0.2") == pytest.approx((0.6, 0.2, 0.0, 0.2))
    assert parse_ratios((3, 1, 1)) == pytest.approx((0.6, 0.2, 0.0, 0.2))
    for bad, why in (("6:-1:1:2", ">= 0"), ("6:x:2", "non-negative numbers"), ("6:2", "2 part"), ("6:1:1:1:1", "5 part"),
                     ("0:1:1:2", "train share > 0"), ("6:nan:1:2", ">= 0"), ("6:inf:1:2", ">= 0")):
        with pytest.raises(DataError, match=f"--split-ratios.*{why}") as caught:
            parse_ratios(bad)
        assert "\n" not in str(caught.value)


def test_train_cli_refuses_bad_ratios_and_too_small_classes_before_writing(tmp_path, capsys):
    from mineralnet.train_cli import train_main

    root = write_dataset(tmp_path / "data", per_class=4)
    for ratios, message in (("6:-1:1:2", "error: --split-ratios must be"),
                            ("6:1:1:2", "error: class 'alpha' has 4 image(s) to split, so its val share")):
        assert train_main(["--data", str(root), "--out", str(tmp_path / "run"), "--split-ratios", ratios]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
        assert not os.path.exists(tmp_path / "run")


def test_a_share_that_rounds_to_no_image_is_refused_naming_class_and_subset(tmp_path):
    root = write_dataset(tmp_path / "data", per_class=20, classes=("alpha", "beta"))
    for number in range(4, 20):  # beta keeps 4 images: 10 % of 4 is 0.4 images
        os.remove(root / "beta" / f"{number:03d}.png")
    _, samples, _ = scan_dataset(str(root))
    with pytest.raises(DataError, match=r"class 'beta' has 4 image.*its val share \(10%, 0.4 images\) rounds to none.*"
                                        r"raise the val share of --split-ratios, or set it to 0"):
        make_split(samples, "6:1:1:2")
    with pytest.raises(DataError, match="class 'beta'.*calib share"):
        make_split(samples, "6:2:1:2")
    rows = make_split(samples, "2:1:1")  # 50 % / 25 % / 25 % of 4: one each, calib intentionally absent
    assert collections.Counter(r["subset"] for r in rows if r["label"] == "beta") == {"train": 2, "val": 1, "test": 1}


def test_identical_and_near_identical_files_share_a_subset(tmp_path):
    root = write_dataset(tmp_path / "data", per_class=12, size=64)  # at 24 px, JPEG changes the texture itself
    for number in range(5):  # exact copies
        shutil.copy(root / "alpha" / "000.png", root / "alpha" / f"copy{number}.png")
    Image.open(root / "beta" / "001.png").convert("RGB").save(root / "beta" / "001_reencoded.jpg", quality=80)
    _, samples, _ = scan_dataset(str(root))
    for seed in range(5):
        rows = {r["path"]: r["subset"] for r in make_split(samples, seed=seed)}
        assert len({rows["alpha/000.png"]} | {rows[f"alpha/copy{n}.png"] for n in range(5)}) == 1
        assert rows["beta/001.png"] == rows["beta/001_reencoded.jpg"]


def test_label_conflicts_stay_in_train_and_cross_class_near_duplicates_are_listed_not_grouped(tmp_path):
    root = write_dataset(tmp_path / "data", per_class=12, size=64)
    shutil.copy(root / "alpha" / "003.png", root / "beta" / "conflict.png")  # one file, two labels
    shutil.copy(root / "alpha" / "003.png", root / "gamma" / "conflict.png")
    Image.open(root / "beta" / "005.png").convert("RGB").save(root / "gamma" / "like_beta.jpg", quality=80)
    _, samples, _ = scan_dataset(str(root))
    report = duplicate_report(samples)
    assert report["label_conflicts"] == [["alpha/003.png", "beta/conflict.png", "gamma/conflict.png"]]
    assert report["cross_class_near_duplicates"] == [["beta/005.png", "gamma/like_beta.jpg"]]
    groups = [{samples[i].path for i in g} for g in duplicate_groups(samples) if len(g) > 1]
    assert groups == [{"alpha/003.png", "beta/conflict.png", "gamma/conflict.png"}]  # the near pair is not grouped
    for seed in range(5):
        rows = {r["path"]: r["subset"] for r in make_split(samples, seed=seed)}
        assert {rows[p] for p in groups[0]} == {"train"}  # never evaluated or calibrated on


def test_training_refuses_a_reused_split_that_separates_a_label_conflict(tmp_path, capsys):
    from mineralnet.training import resolve_config
    from mineralnet.training.loop import _prepare_data

    root = write_dataset(tmp_path / "data", per_class=12)
    shutil.copy(root / "alpha" / "003.png", root / "beta" / "conflict.png")
    config = resolve_config(overrides={"data": str(root), "out": str(tmp_path / "run")})
    _, rows, report = _prepare_data(config)
    assert report["label_conflicts"] == [["alpha/003.png", "beta/conflict.png"]]
    assert "label conflict: identical files alpha/003.png, beta/conflict.png (all in train)" in capsys.readouterr().err
    for row in rows:
        row["subset"] = "test" if row["path"] == "beta/conflict.png" else row["subset"]
    write_split(rows, str(tmp_path / "split.csv"))
    with pytest.raises(DataError, match="identical files alpha/003.png, beta/conflict.png in test and train"):
        _prepare_data(config.replace(split=str(tmp_path / "split.csv")))
    assert not os.path.exists(tmp_path / "run")


def test_split_csv_round_trip_and_missing_files(tmp_path):
    root = write_dataset(tmp_path / "data")
    _, samples, _ = scan_dataset(str(root))
    rows = make_split(samples)
    assert {r["subset"] for r in rows} == set(SUBSETS)
    write_split(rows, str(tmp_path / "split.csv"))
    back = read_split(str(tmp_path / "split.csv"), str(root))
    assert [{k: r[k] for k in ("path", "label", "subset", "sha256")} for r in back] == rows  # with each hash
    assert all(os.path.isfile(r["file"]) for r in back)
    with pytest.raises(DataError, match="do not exist.*--data"):
        read_split(str(tmp_path / "split.csv"), str(tmp_path / "moved"))
    old = "path,label,subset\nalpha/000.png,alpha,train\nalpha/001.png,alpha,val\nalpha/002.png,alpha,test\n"
    (tmp_path / "old.csv").write_text(old)  # a split.csv of a run made before calib existed
    assert [r["subset"] for r in read_split(str(tmp_path / "old.csv"), str(root))] == ["train", "val", "test"]
    (tmp_path / "bad.csv").write_text(old.replace("val", "holdout"))
    with pytest.raises(DataError, match="unknown subset 'holdout': use train, val, calib, test"):
        read_split(str(tmp_path / "bad.csv"))


def test_bad_files_are_skipped_named_and_counted(tmp_path):
    root = write_dataset(tmp_path / "data")
    (root / "alpha" / "empty.jpg").write_bytes(b"")
    (root / "beta" / "notes.jpg").write_text("this is text, not a JPEG")
    data = (root / "gamma" / "000.png").read_bytes()
    (root / "gamma" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "gamma" / "readme.txt").write_text("ignored: not an image extension")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, by the caller from the report: no Python warning as well
        classes, samples, report = scan_dataset(str(root))
    assert report["num_skipped"] == 3
    assert sorted(s["path"] for s in report["skipped"]) == ["alpha/empty.jpg", "beta/notes.jpg", "gamma/truncated.png"]
    assert report["num_images"] == 30 and len(samples) == 30
    assert report["ignored_non_image_files"] == ["gamma/readme.txt"]


def test_missing_dir_empty_class_and_tiny_class_error_clearly(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data"):
        scan_dataset(str(tmp_path / "nowhere"))
    root = write_dataset(tmp_path / "data")
    os.makedirs(root / "delta")
    with pytest.raises(DataError, match="delta.*no readable image"):
        scan_dataset(str(root))
    os.rmdir(root / "delta")
    os.makedirs(root / "delta")
    rng = np.random.default_rng(5)
    for number in range(2):
        Image.fromarray(make_specimen(4, 24, rng)).save(root / "delta" / f"{number}.png")
    for number in range(2, 8):  # 8 images, but only 2 distinct ones: too few for four subsets
        shutil.copy(root / "delta" / f"{number % 2}.png", root / "delta" / f"{number}.png")
    _, samples, _ = scan_dataset(str(root))
    with pytest.raises(DataError, match="class 'delta' has 2 distinct image.*train, val, calib, test"):
        make_split(samples)


def test_every_pixel_format_becomes_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((10, 12), 255, np.uint8)])
    rgba[0, 0, 3] = 0  # one transparent pixel: composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "deep.png")  # 16-bit grey
    frames = [Image.fromarray(rgb).convert("P"), Image.new("P", (12, 10), 3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rgb).save(tmp_path / "plain.bmp")
    for name in ("rgba.png", "palette.png", "gray.png", "deep.png", "anim.gif", "plain.bmp"):
        image = load_image(str(tmp_path / name), 12)
        assert image.shape == (12, 12, 3) and image.dtype == np.uint8, name
    assert tuple(load_image(str(tmp_path / "rgba.png"), 12)[0, 0]) != tuple(rgb[0, 0]) or tuple(rgb[0, 0]) == (255, 255, 255)
    deep = load_image(str(tmp_path / "deep.png"), 12)
    np.testing.assert_array_equal(deep[..., 0], load_image(str(tmp_path / "gray.png"), 12)[..., 0])
    gif = load_image(str(tmp_path / "anim.gif"), 12)
    assert gif.std() > 10  # the first (textured) frame, not the flat second one


def _centres(pixels, block=8):
    """The colour at the centre of each flat block along the long side (JPEG is exact only away from edges)."""
    if pixels.shape[0] > pixels.shape[1]:
        return [pixels[i + block // 2, block // 2].tolist() for i in range(0, pixels.shape[0], block)]
    return [pixels[block // 2, i + block // 2].tolist() for i in range(0, pixels.shape[1], block)]


def test_exif_orientation_makes_photos_upright(tmp_path):
    good, _ = write_decode_cases(tmp_path)
    for orientation, upright in ORIENTED.items():
        path = good[f"exif_{orientation}"]
        with Image.open(path) as stored:  # the pixels as stored, which is what the old decoder returned
            expected = upright(np.asarray(stored.convert("RGB")))
        assert np.array_equal(np.asarray(open_rgb(path)), expected), f"orientation {orientation}"
        reference = np.asarray(Image.fromarray(np.ascontiguousarray(expected)).resize((16, 16), Image.BILINEAR))
        assert np.array_equal(load_image(path, 16), reference), f"orientation {orientation}"


def test_embedded_colour_profiles_are_converted_to_srgb(tmp_path):
    good, _ = write_decode_cases(tmp_path)
    # Linear-light profile with red and green swapped: red is sRGB green, 128 grey (linear 0.5) is sRGB 188.
    pixels = np.asarray(open_rgb(good["swapped_png"])).astype(int)
    expected = [[0, 255, 0], [255, 0, 0], [0, 0, 255], [188, 188, 188], [255, 255, 255], [0, 0, 0]]
    assert np.abs(pixels[0] - expected).max() <= 1
    # JPEG's off-by-one near 0 becomes up to ~13 through a linear-light profile: hence the looser tolerance.
    assert np.abs(np.array(_centres(np.asarray(open_rgb(good["swapped_jpg"])))) - expected[:4]).max() <= 16
    upright = np.asarray(open_rgb(good["swapped_rotated_jpg"]))  # red left of blue, turned clockwise, then sRGB
    assert upright.shape == (16, 8, 3)
    assert np.abs(np.array(_centres(upright)) - [[0, 255, 0], [0, 0, 255]]).max() <= 16
    assert np.asarray(open_rgb(good["swapped_rgba_png"])).tolist() == [[[0, 255, 0], [255, 255, 255]]]  # alpha kept
    assert np.asarray(open_rgb(good["swapped_palette_png"])).tolist() == [[[0, 255, 0], [255, 0, 0]]]
    for grey in ("grey_png", "grey16_png", "grey_rgb_profile_png"):  # a linear grey profile: 55 -> 128, 128 -> 188
        assert np.asarray(open_rgb(good[grey]))[0, :, 0].tolist() == [0, 128, 188, 255], grey
    cmyk = np.array(_centres(np.asarray(open_rgb(good["cmyk_jpg"]))))  # Pillow's naive CMYK gives 127 for k=128
    assert np.abs(cmyk - [[255, 0, 0], [187, 187, 187]]).max() <= 16
    # No profile means sRGB and is decoded as before; a file tagged sRGB gives the same bytes.
    with Image.open(good["untagged_png"]) as plain:
        untagged = np.asarray(plain.convert("RGB"))
    assert np.array_equal(np.asarray(open_rgb(good["untagged_png"])), untagged)
    assert np.array_equal(np.asarray(open_rgb(good["srgb_tagged_png"])), untagged)


def test_unusable_colour_profiles_skip_the_file_with_the_reason(tmp_path):
    root = write_dataset(tmp_path / "data", per_class=4)
    _, bad = write_decode_cases(tmp_path)
    for name, path in bad.items():
        with pytest.raises(OSError, match="ICC colour profile.*re-save the picture as sRGB"):
            load_image(path, 16)
        shutil.copy(path, root / "alpha" / f"{name}.png")
    _, samples, report = scan_dataset(str(root))
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"alpha/corrupt.png", "alpha/mismatched.png"} and len(samples) == 12
    assert "unreadable embedded ICC" in reasons["alpha/corrupt.png"]
    assert "for GRAY pictures but the pixels are RGB" in reasons["alpha/mismatched.png"]

def test_pipeline_batches_augments_training_only_and_weights_classes(tmp_path):
    root = write_dataset(tmp_path / "data", per_class=6, size=40)
    files = sorted(str(p) for p in root.rglob("*.png"))
    labels = [0] * 6 + [1] * 6 + [2] * 6
    evaluation = make_dataset(files, labels, 3, 32, 4)
    x, y = next(iter(evaluation))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 3)
    np.testing.assert_array_equal(x.numpy()[0], load_image(files[0], 32))  # evaluation = the contract exactly
    training = make_dataset(files, labels, 3, 32, 4, training=True, augment=AugmentConfig(), seed=1)
    batches = [b[0].numpy() for b in training]
    assert sum(len(b) for b in batches) == 18
    assert all(b.min() >= 0 and b.max() <= 255 for b in batches)
    raw = np.stack([load_image(f, 32) for f in files]).astype("float32")
    assert not any(np.allclose(batches[0][0], r) for r in raw)  # augmented, not a raw image
    weights = class_weights([0, 0, 0, 1], 2)
    assert weights[1] == pytest.approx(2.0) and weights[0] == pytest.approx(4 / 6)


def test_colour_jitter_and_zoom_stay_within_their_bounds_and_zero_is_off():
    """Each option alone on a fixed image: saturation keeps every pixel's grey and scales its distance from it by a
    factor within 1 +- s; contrast keeps the mean grey and scales distances from it within 1 +- c; zoom of a ramp
    steepens it by 1/side with side in (1 - zoom, 1]; all three at 0 return the image untouched."""
    import tensorflow as tf

    from mineralnet.data.pipeline import augment_image, stream_key

    off = dict(crop=False, flip=False, rotation=0, brightness=0, noise=0)
    rng = np.random.default_rng(0)
    image = rng.uniform(80, 170, (32, 32, 3)).astype("float32")  # mid-range: the +-20 % blends never clip
    grey = image @ np.array([0.2989, 0.587, 0.114], "float32")
    for seed in range(4):
        key = stream_key(seed, 1, 0, 0)
        same = augment_image(tf.constant(image), key, AugmentConfig(**off)).numpy()
        np.testing.assert_array_equal(same, image)
        out = augment_image(tf.constant(image), key, AugmentConfig(**off, saturation=0.2)).numpy()
        np.testing.assert_allclose(out @ np.array([0.2989, 0.587, 0.114], "float32"), grey, atol=0.05)
        factor = (out - grey[..., None]) / (image - grey[..., None])
        assert not np.allclose(out, image) and 0.8 - 1e-3 <= factor.mean() <= 1.2 + 1e-3 and factor.std() < 1e-2
        out = augment_image(tf.constant(image), key, AugmentConfig(**off, contrast=0.2)).numpy()
        factor = (out - grey.mean()) / (image - grey.mean())
        assert not np.allclose(out, image) and 0.8 - 1e-3 <= np.median(factor) <= 1.2 + 1e-3
        np.testing.assert_allclose((out @ np.array([0.2989, 0.587, 0.114], "float32")).mean(), grey.mean(), atol=0.05)
        ramp = np.broadcast_to((np.arange(32, dtype="float32") * 3)[None, :, None], (32, 32, 3)).copy()
        out = augment_image(tf.constant(ramp), key, AugmentConfig(**off, zoom=0.3)).numpy()
        steps = np.diff(out, axis=1)
        assert np.allclose(np.diff(out, axis=0), 0, atol=1e-3) and np.allclose(steps, steps.mean(), atol=1e-3)
        assert 3 * 0.7 - 1e-3 < steps.mean() < 3 - 1e-3  # zoomed in (a little, at least), by at most 1/0.7
    with pytest.raises(ValueError, match="'zoom' must be at most 0.5"):
        AugmentConfig.from_dict({"zoom": 0.6})
    with pytest.raises(ValueError, match="'saturation' must be a number from 0"):
        AugmentConfig.from_dict({"saturation": 2})


@requires_minet
def test_real_minet_split_keeps_the_known_near_duplicates_together_and_never_joins_classes():
    _, samples, report = scan_dataset(MINET)
    assert report["num_images"] == 941 and report["num_skipped"] == 0
    groups = [sorted(samples[i].path for i in g) for g in duplicate_groups(samples) if len(g) > 1]
    assert all(len({path.split("/")[0] for path in group}) == 1 for group in groups)
    # The README's two near-duplicate pairs and nothing else (the old hash-only rule also joined e.g.
    # chrysocolla/0018, chrysocolla/0072, malachite/0229 and quartz/0072 into one group).
    assert groups == [["bornite/0009.jpg", "bornite/0016.jpg"], ["quartz/0101.jpg", "quartz/0115.jpg"]]
    assert duplicate_report(samples) == {"label_conflicts": [], "cross_class_near_duplicates": []}
    rows = {r["path"]: r["subset"] for r in make_split(samples, seed=0)}
    assert rows["bornite/0009.jpg"] == rows["bornite/0016.jpg"]
    assert rows["quartz/0101.jpg"] == rows["quartz/0115.jpg"]
    shares = collections.Counter(rows.values())
    for subset, share in zip(SUBSETS, (0.6, 0.1, 0.1, 0.2)):
        assert abs(shares[subset] / 941 - share) < 0.01, subset


def test_training_fits_on_train_and_val_rows_only_never_calib_or_test(tmp_path, monkeypatch, demo_data):
    """A spy around mineralnet's own make_dataset (the real one still builds every dataset) records which files
    the fit reads."""
    from mineralnet.training import loop, resolve_config, train

    seen = []

    def recording_make_dataset(files, labels, *args, **kwargs):
        seen.append((kwargs.get("training", args[4] if len(args) > 4 else False), list(files)))
        return make_dataset(files, labels, *args, **kwargs)

    monkeypatch.setattr(loop, "make_dataset", recording_make_dataset)
    config = resolve_config(overrides={"weights": "none", "data": demo_data, "out": str(tmp_path / "run"),
                                       "model": "simple_cnn", "image_size": 32, "epochs": 1, "batch_size": 16,
                                       "evaluate": False})
    run = train(config)
    rows = read_split(os.path.join(run, "split.csv"), demo_data)
    files = {s: {r["file"] for r in rows if r["subset"] == s} for s in SUBSETS}
    per_subset = json.load(open(os.path.join(run, "data_report.json")))["per_subset"]
    assert per_subset == {s: len(files[s]) for s in SUBSETS} and per_subset["calib"] == 8  # 2 of each class's 16
    assert per_subset["val"] == 8 and per_subset["test"] == 12
    read = [set(f) for _, f in seen]
    assert files["train"] in read and files["val"] in read
    assert all(f in (files["train"], files["val"]) for f in read)  # no calib or test file ever reaches the fit
