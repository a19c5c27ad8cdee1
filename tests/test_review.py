"""The learning loop (issue 14, point 3): review-queue import, retraining with --init-from, old-vs-new comparison."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mineralnet import rundir
from mineralnet.data import make_demo_dataset, make_split, read_split, scan_dataset, write_split
from mineralnet.review import LABEL_SUFFIX, MANIFEST, main, mcnemar_p
from mineralnet.utils import sha256_file, write_json


def _train_row(data, path):
    """The split.csv line the import adds for a new image: train, its class folder, its content hash."""
    return f"{path},{path.split('/')[0]},{sha256_file(os.path.join(data, path))},train"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small demo dataset (3 classes) and a run folder with its labels.json and split.csv (no model)."""
    root = tmp_path_factory.mktemp("review")
    data = make_demo_dataset(str(root / "data"), num_classes=3, images_per_class=12, image_size=40)
    classes, samples, _ = scan_dataset(data)
    run = root / "run"
    run.mkdir()
    write_split(make_split(samples), str(run / rundir.SPLIT))
    write_json(str(run / rundir.LABELS), classes)
    return {"data": data, "run": str(run), "classes": classes}


@pytest.fixture
def world(base, tmp_path):
    """A fresh copy of the dataset and run, and a queue: new pictures labelled a class, discard, unknown,
    unlabelled, one identical to a dataset image, and one whose import name is taken already."""
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    shutil.copytree(base["data"], data)
    shutil.copytree(base["run"], run)
    with open(os.path.join(run, rundir.CONFIG), "w") as handle:
        json.dump({"data": data, "image_size": 32}, handle)
    queue = tmp_path / "queue"
    queue.mkdir()
    classes = base["classes"]
    rng = np.random.default_rng(0)

    def item(stem, label=None, copy_of=None):
        if copy_of:
            shutil.copy(copy_of, queue / f"{stem}.jpg")
        else:
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(queue / f"{stem}.jpg")
        (queue / f"{stem}.json").write_text(json.dumps({"seq": 1, "class": classes[0], "model_sha256": "ab" * 32,
                                                        "top3": [{"label": classes[0], "p": 0.5}]}))
        if label:
            (queue / f"{stem}{LABEL_SUFFIX}").write_text(json.dumps({
                "label": label, "labelled_at": "2026-01-01T00:00:00+00:00", "model_sha256": "ab" * 32,
                "source": "ui"}))

    existing = os.path.join(data, classes[1], sorted(os.listdir(os.path.join(data, classes[1])))[0])
    item("0001_a", classes[0])
    item("0002_b", classes[1])
    item("0003_c", "discard")
    item("0004_d", "unknown")
    item("0005_e")
    item("0006_f", classes[0], copy_of=existing)  # same bytes as a dataset image (of another class, even)
    item("0007_g", classes[2])
    taken = os.path.join(data, classes[2], "review_0007_g.jpg")
    Image.new("RGB", (40, 40), (9, 9, 9)).save(taken)
    return {"data": data, "run": run, "queue": str(queue), "classes": classes, "taken": taken,
            "taken_sha": sha256_file(taken), "existing": existing}


def _images(data):
    return sorted(f"{c}/{n}" for c in os.listdir(data) if os.path.isdir(os.path.join(data, c))
                  for n in os.listdir(os.path.join(data, c)))


def test_import_adds_exactly_the_labelled_images_and_keeps_the_split(world, capsys):
    data, classes = world["data"], world["classes"]
    before = _images(data)
    old_split = open(os.path.join(world["run"], rundir.SPLIT)).read()
    assert main(["import", "--queue", world["queue"], "--data", data, "--run", world["run"]]) == 0
    out, err = capsys.readouterr()
    added = sorted(set(_images(data)) - set(before))
    assert added == [f"{classes[0]}/review_0001_a.jpg", f"{classes[1]}/review_0002_b.jpg",
                     f"{classes[2]}/review_0007_g_1.jpg"]  # never over the existing review_0007_g.jpg
    assert sha256_file(world["taken"]) == world["taken_sha"] and set(before) <= set(_images(data))
    for path in added:
        stem = path.split("review_")[1][:6]
        assert sha256_file(os.path.join(data, path)) == sha256_file(os.path.join(world["queue"], f"{stem}.jpg"))
    assert "duplicate: 0006_f.jpg" in err and os.path.relpath(world["existing"], data) in err
    assert "1 unlabelled" in out and "1 discard" in out and "1 unknown" in out
    manifest = [json.loads(line) for line in open(os.path.join(data, MANIFEST))]
    assert [m["file"] for m in manifest] == added
    assert all(m["sha256"] == sha256_file(os.path.join(data, m["file"])) and m["model_sha256"] == "ab" * 32
               and m["predicted"] == classes[0] and m["top3"] and m["device"] == "queue" for m in manifest)
    new_split = open(os.path.join(os.path.dirname(world["run"]), "run_plus_review_split.csv")).read()
    assert new_split.startswith(old_split)  # every old row, test rows included, byte for byte in its old subset
    new_rows = new_split[len(old_split):].splitlines()
    assert new_rows == [_train_row(data, path) for path in added]
    # A second import of the same queue finds everything already there: nothing new, no second split over the first.
    assert main(["import", "--queue", world["queue"], "--data", data]) == 0
    assert _images(data) == sorted(before + added) and len(open(os.path.join(data, MANIFEST)).readlines()) == 3
    assert capsys.readouterr().err.count("duplicate:") == 4
    assert main(["import", "--queue", world["queue"], "--data", data, "--run", world["run"]]) == 2
    assert "already exists" in capsys.readouterr().err


def _reencoded(world, stem, row, label):
    """A queue item that is a near duplicate (same picture, other JPEG bytes) of the dataset image of `row`."""
    queue = world["queue"]
    Image.open(os.path.join(world["data"], row["path"])).convert("RGB").save(os.path.join(queue, f"{stem}.jpg"),
                                                                             quality=90)
    with open(os.path.join(queue, f"{stem}{LABEL_SUFFIX}"), "w") as handle:
        json.dump({"label": label, "labelled_at": "2026-01-01T00:00:00+00:00", "source": "ui"}, handle)


def test_a_near_duplicate_of_a_held_out_image_stays_out_of_train_and_the_dataset(world, capsys):
    """Re-encoded copies of a test and a val image (the latter labelled another class) are neither copied nor in
    the new split; a re-encoded train image joins train as usual. The old rows stay byte for byte."""
    data, classes = world["data"], world["classes"]
    rows = read_split(os.path.join(world["run"], rundir.SPLIT))
    test, val, train = (next(r for r in rows if r["subset"] == s) for s in ("test", "val", "train"))
    _reencoded(world, "0008_t", test, test["label"])
    _reencoded(world, "0009_v", val, next(c for c in classes if c != val["label"]))
    _reencoded(world, "0010_r", train, train["label"])
    before = _images(data)
    old_split = open(os.path.join(world["run"], rundir.SPLIT)).read()
    assert main(["import", "--queue", world["queue"], "--data", data, "--run", world["run"]]) == 0
    out, err = capsys.readouterr()
    added = sorted(set(_images(data)) - set(before))
    assert added == sorted([f"{classes[0]}/review_0001_a.jpg", f"{classes[1]}/review_0002_b.jpg",
                            f"{classes[2]}/review_0007_g_1.jpg", f"{train['label']}/review_0010_r.jpg"])
    assert "2 near duplicate(s)" in out and "0008_t.jpg, 0009_v.jpg" in out
    assert f"0008_t.jpg (labelled {test['label']}) looks like test image {test['path']}" in err
    assert f"looks like val image {val['path']} (labelled {val['label']}); not imported" in err
    new_split = open(os.path.join(os.path.dirname(world["run"]), "run_plus_review_split.csv")).read()
    assert new_split.startswith(old_split)
    assert sorted(new_split[len(old_split):].splitlines()) == [_train_row(data, p) for p in added]
    assert sorted(json.loads(line)["file"] for line in open(os.path.join(data, MANIFEST))) == added


def test_an_import_that_crashes_midway_is_completed_by_the_next_without_copying_twice(world, monkeypatch, capsys):
    """A crash right after the 2nd copy (before its manifest line), and a manifest line cut short: the next import
    records that copy (not copying it again), drops the torn line, and the split lists each new image once."""
    import mineralnet.review as review

    data, classes = world["data"], world["classes"]
    before = _images(data)
    copies = []

    def crashing_copy(source, folder, stem):
        copies.append(review.__dict__["_real_copy"](source, folder, stem))
        if len(copies) == 2:
            raise RuntimeError("power cut")
        return copies[-1]

    monkeypatch.setitem(review.__dict__, "_real_copy", review._copy_new)
    monkeypatch.setattr(review, "_copy_new", crashing_copy)
    with pytest.raises(RuntimeError, match="power cut"):
        review.import_queue(world["queue"], data, world["run"])
    assert copies == ["review_0001_a.jpg", "review_0002_b.jpg"]
    manifest_path = os.path.join(data, MANIFEST)
    assert [json.loads(line)["file"] for line in open(manifest_path)] == [f"{classes[0]}/review_0001_a.jpg"]
    with open(manifest_path, "a") as handle:  # the 2nd line, cut short by the crash
        handle.write('{"file": "%s/review_0002_b.jpg", "sha' % classes[1])
    monkeypatch.undo()

    assert main(["import", "--queue", world["queue"], "--data", data, "--run", world["run"]]) == 0
    out = capsys.readouterr().out
    assert f"1 of them copied by an interrupted import and now recorded, not copied again: {classes[1]}/review_0002_b" \
        in out
    added = sorted(set(_images(data)) - set(before))
    assert added == [f"{classes[0]}/review_0001_a.jpg", f"{classes[1]}/review_0002_b.jpg",
                     f"{classes[2]}/review_0007_g_1.jpg"]  # no review_0002_b_1.jpg: not copied twice
    manifest = [json.loads(line) for line in open(manifest_path)]
    assert sorted(m["file"] for m in manifest) == added and len({m["sha256"] for m in manifest}) == 3
    assert all(m["sha256"] == sha256_file(os.path.join(data, m["file"])) for m in manifest)
    assert [m.get("recovered", False) for m in manifest] == [False, True, False]
    old_split = open(os.path.join(world["run"], rundir.SPLIT)).read()
    new_split = open(os.path.join(os.path.dirname(world["run"]), "run_plus_review_split.csv")).read()
    assert new_split.startswith(old_split)
    assert sorted(new_split[len(old_split):].splitlines()) == [_train_row(data, p) for p in added]
    # Imported once more: nothing new, nothing recorded twice.
    assert main(["import", "--queue", world["queue"], "--data", data]) == 0
    assert _images(data) == sorted(before + added) and len(open(manifest_path).readlines()) == 3


def test_a_label_that_is_no_class_stops_the_import_before_any_copy(world, capsys):
    (open(os.path.join(world["queue"], f"0002_b{LABEL_SUFFIX}"), "w")).write(json.dumps({"label": "gold"}))
    before = _images(world["data"])
    assert main(["import", "--queue", world["queue"], "--data", world["data"], "--run", world["run"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label 'gold'" in err[0] and "0002_b.label.json" in err[0]
    assert _images(world["data"]) == before and not os.path.exists(os.path.join(world["data"], MANIFEST))
    assert not os.path.exists(os.path.join(os.path.dirname(world["run"]), "run_plus_review_split.csv"))


def test_mcnemar_exact_p():
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)  # six discordant items, all one way
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)


def _train(argv, capsys):
    from mineralnet.train_cli import train_main

    code = train_main(argv)
    return code, capsys.readouterr()


@pytest.mark.slow
def test_retrain_from_the_old_weights_and_compare(world, tmp_path, capsys):
    """The loop end to end: train, import, retrain from the old weights (at a learning rate so small that the
    new model is the old one: --init-from really loaded them), compare on the same test rows; mismatches refused."""
    from mineralnet.review import compare_runs

    common = ["--data", world["data"], "--model", "simple_cnn", "--weights", "none", "--image-size", "32",
              "--batch-size", "8", "--no-evaluate"]
    old = str(tmp_path / "old")
    code, _ = _train(common + ["--out", old, "--epochs", "3", "--split", os.path.join(world["run"], "split.csv")],
                     capsys)
    assert code is None or code == 0
    assert main(["import", "--queue", world["queue"], "--data", world["data"], "--run", old]) == 0
    split = str(tmp_path / "old_plus_review_split.csv")
    new = str(tmp_path / "new")
    code, printed = _train(common + ["--out", new, "--epochs", "1", "--lr", "1e-12", "--split", split,
                                     "--init-from", os.path.join(old, "model.keras")], capsys)
    assert code in (None, 0) and f"from the weights of {os.path.join(old, 'model.keras')}" in printed.out
    assert len(open(os.path.join(new, "split.csv")).readlines()) == len(open(split).readlines())
    from mineralnet.data import load_image

    pixels = np.stack([load_image(r["file"], 32) for r in rundir.Run(old).rows("test")]).astype("float32")
    before, after = (rundir.Run(r).load_model().predict(pixels, verbose=0) for r in (old, new))
    np.testing.assert_allclose(after, before, atol=1e-5)  # the old run's trained weights, not a new start
    result = compare_runs(old, new)
    assert result["old"] == result["new"] and result["only_old"] == result["only_new"] == 0
    assert main(["compare", "--old", old, "--new", new]) == 0
    assert "the same" in capsys.readouterr().out

    # Mismatches: another image size, and --resume.
    code, printed = _train([a if a != "32" else "48" for a in common] + [
        "--out", str(tmp_path / "x"), "--epochs", "1", "--init-from", os.path.join(old, "model.keras")], capsys)
    assert code == 2 and "image_size 32 run but this run has image_size 48" in printed.err
    assert not os.path.exists(tmp_path / "x" / "config.json")
    code, printed = _train(["--out", new, "--resume", "--init-from", os.path.join(old, "model.keras")], capsys)
    assert code == 2 and "only one of them" in printed.err

    # compare refuses runs measured on different test rows.
    moved = str(tmp_path / "moved")
    shutil.copytree(new, moved)
    lines = open(os.path.join(moved, "split.csv")).read().splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith(",test"))
    lines[index] = lines[index][: -len("test")] + "train"
    open(os.path.join(moved, "split.csv"), "w").write("\n".join(lines) + "\n")
    assert main(["compare", "--old", old, "--new", moved]) == 2
    assert "different test rows (1 differ" in capsys.readouterr().err


def test_init_from_loads_the_source_weights_exactly(base, tmp_path):
    """The model built for a run and given --init-from predicts exactly what the source model predicts; a model
    with other classes is refused with one line."""
    import keras

    from mineralnet.training import resolve_config
    from mineralnet.training.config import ConfigError
    from mineralnet.training.loop import _build, init_weights

    config = resolve_config(overrides={"data": base["data"], "model": "simple_cnn", "weights": "none",
                                       "image_size": 32, "epochs": 1})
    keras.utils.set_random_seed(1)
    source = _build(config, 3)
    path = str(tmp_path / "model.keras")
    source.save(path)
    keras.utils.set_random_seed(2)
    model = _build(config.replace(init_from=path), 3)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    assert not np.allclose(model.predict(x, verbose=0), source.predict(x, verbose=0))
    init_weights(model, config.replace(init_from=path), base["classes"])
    np.testing.assert_array_equal(model.predict(x, verbose=0), source.predict(x, verbose=0))
    with pytest.raises(ConfigError, match="has other weights"):
        init_weights(_build(config, 4), config.replace(init_from=path), base["classes"] + ["extra"])
    write_json(str(tmp_path / "labels.json"), ["a", "b", "c"])
    with pytest.raises(ConfigError, match="was trained on the classes"):
        init_weights(model, config.replace(init_from=path), base["classes"])
