"""Conformal calibration (mineralnet.conformal: split and --per-class Mondrian) and the runner's use of it."""

import json
import os
import shutil

import numpy as np
import pytest

from edge.config import parse_config
from edge.decision import Decider
from edge.model import Model, ModelError, read_sidecar
from edge.preprocess import open_rgb, prepare
from edge.sources import Capture, FolderSource
from mineralnet.conformal import conformal_qhat, main, min_items, reject_rule
from mineralnet.data import read_split, write_split

ALPHA = 0.1
BINS = '[bins]\ndefault = "x"\nrecheck = "r"\n[belt]\nspeed_mm_s = 1\ncamera_to_ejector_mm = 1\n'


@pytest.fixture(scope="module")
def fresh_run(tiny_export, tmp_path_factory):
    """A run directory over 1000 new demo images (another seed) with 400 val and 400 test rows (a 3-part split).

    The tiny export's own 13 val and 12 test rows are too few to measure coverage within 0.05: for that the
    calibration and test images only have to be exchangeable with each other, not with the training images.
    """
    from mineralnet.data import make_demo_dataset, make_split, scan_dataset
    from mineralnet.utils import write_json

    root = tmp_path_factory.mktemp("fresh_run")
    data = make_demo_dataset(str(root / "data"), num_classes=4, images_per_class=250, image_size=48, seed=1)
    classes, samples, _ = scan_dataset(data)
    assert classes == tiny_export["labels"]
    run = root / "run"
    run.mkdir()
    write_split(make_split(samples, (0.2, 0.4, 0.4), seed=1), str(run / "split.csv"))
    write_json(str(run / "labels.json"), classes)
    write_json(str(run / "config.json"), {"data": data, "image_size": 32, "model": "simple_cnn"})
    return str(run)


@pytest.fixture(scope="module")
def calib_run(fresh_run, tmp_path_factory):
    """fresh_run re-split 4 ways: its 400 val rows become calib, its 200 train rows val (so val is there but must
    not be used), test stays. None of these images trained the model, so all are exchangeable."""
    run = tmp_path_factory.mktemp("calib_run")
    for name in ("labels.json", "config.json"):
        shutil.copy(os.path.join(fresh_run, name), run / name)
    rename = {"train": "val", "val": "calib", "test": "test"}
    rows = [{**r, "subset": rename[r["subset"]]} for r in read_split(os.path.join(fresh_run, "split.csv"))]
    write_split(rows, str(run / "split.csv"))
    return str(run)


def test_conformal_qhat():
    scores = np.arange(10) / 10.0  # 0.0 ... 0.9
    assert conformal_qhat(scores, 0.2) == pytest.approx(0.8)  # ceil(11 * 0.8) = 9th smallest
    assert conformal_qhat(scores, 0.05) == 1.0  # ceil(11 * 0.95) = 11 > n
    assert conformal_qhat(np.arange(9) / 10.0, 0.5) == pytest.approx(0.4)  # (9 + 1) * 0.5 = 5 exactly: 5th
    with pytest.raises(ValueError):
        conformal_qhat(scores, 0.0)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.25, 0.3])
def test_min_items_is_where_qhat_leaves_one(alpha):
    n = min_items(alpha)
    assert conformal_qhat(np.full(n - 1, 0.5), alpha) == 1.0 and conformal_qhat(np.full(n, 0.5), alpha) == 0.5


def _copy_model(tiny_export, fmt, directory):
    model = os.path.join(directory, f"model_{fmt}.tflite")
    shutil.copy(tiny_export[fmt], model)
    shutil.copy(tiny_export[fmt][: -len(".tflite")] + ".json", model[: -len(".tflite")] + ".json")
    return model


def _rows(run, subset):
    data = json.load(open(os.path.join(run, "config.json")))["data"]
    return [r for r in read_split(os.path.join(run, "split.csv"), data) if r["subset"] == subset]


def _probabilities(model, rows):
    return np.stack([
        model.classify(prepare(open_rgb(r["file"]), None, model.input_size, model.input_dtype,
                               model.input_scale, model.input_zero_point))
        for r in rows
    ])


def _truth(model, rows):
    return np.array([model.labels.index(r["label"]) for r in rows])


def _three_part_run(tiny_export, directory):
    """The tiny export's run with an old-style 3-part split: its calib rows become val rows."""
    run = os.path.join(directory, "three_part_run")
    os.makedirs(run)
    for name in ("labels.json", "config.json"):
        shutil.copy(os.path.join(tiny_export["run"], name), os.path.join(run, name))
    rows = [{**r, "subset": "val" if r["subset"] == "calib" else r["subset"]}
            for r in read_split(os.path.join(tiny_export["run"], "split.csv"))]
    write_split(rows, os.path.join(run, "split.csv"))
    return run


def test_a_split_without_calib_rows_falls_back_to_val_and_says_so(tiny_export, tmp_path, capsys):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    sidecar_path = model_path[: -len(".tflite")] + ".json"
    before = json.load(open(sidecar_path))
    run = _three_part_run(tiny_export, str(tmp_path / "runs"))
    assert main(["--run", run, "--model", model_path, "--alpha", "0.2"]) == 0
    after = json.load(open(sidecar_path))
    reject = after.pop("reject")
    reference = after.pop("reference")  # the drift alarm's (edge/drift.py), from the same rows
    assert after == before  # nothing else changed
    assert reference["subset"] == "val" and sum(reference["class_counts"]) == len(_rows(run, "val"))
    assert reject == {
        "method": "split_conformal", "subset": "val", "n": len(_rows(run, "val")), "alpha": 0.2,
        "qhat": reject["qhat"], "score": "1 - p_true", "sorted_share": reject["sorted_share"],
        "sorted_error": reject["sorted_error"],
    }
    assert 0.0 <= reject["qhat"] < 1.0
    out, err = capsys.readouterr()
    assert "qhat=" in out and "has no calib rows" in err and "only approximately" in err
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_calib_rows_are_used_and_sorted_share_is_reported(tiny_export, calib_run, tmp_path, capsys):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    assert main(["--run", calib_run, "--model", model_path, "--alpha", str(ALPHA)]) == 0
    model = Model(model_path)
    reject = model.reject
    calib = _rows(calib_run, "calib")
    assert reject["subset"] == "calib" and reject["n"] == len(calib) == 400 != len(_rows(calib_run, "val"))

    # By hand from the runner's own probabilities on exactly the calib rows.
    probabilities = _probabilities(model, calib)
    truth = _truth(model, calib)
    scores = 1.0 - probabilities[np.arange(len(calib)), truth]
    assert reject["qhat"] == pytest.approx(conformal_qhat(scores, ALPHA), abs=1e-6)
    in_set = probabilities >= 1.0 - reject["qhat"]
    singles = in_set.sum(axis=1) == 1
    assert reject["sorted_share"] == pytest.approx(singles.mean())
    assert reject["sorted_error"] == pytest.approx(np.mean(probabilities[singles].argmax(axis=1) != truth[singles]))
    out, err = capsys.readouterr()
    assert "using the 400 calib rows" in out and f"{100 * singles.mean():.1f} % of the 400 calib images" in out
    assert "calib rows" not in err
    assert ("only" in err) == (singles.mean() < 0.5)


def test_a_low_sorted_share_warns(tiny_export, tmp_path, capsys):
    # 13 val images are too few for alpha 0.05: qhat = 1, every class is in every set, nothing would be sorted.
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    assert main(["--run", tiny_export["run"], "--model", model_path, "--alpha", "0.05"]) == 0
    err = capsys.readouterr().err
    assert "too few" in err and "only 0.0 % of items would be sorted" in err
    reject = Model(model_path).reject
    assert reject["qhat"] == 1.0 and reject["sorted_share"] == 0.0 and reject["sorted_error"] is None


@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_prediction_sets_cover_the_test_rows(tiny_export, calib_run, tmp_path, fmt):
    model_path = _copy_model(tiny_export, fmt, tmp_path)
    assert main(["--run", calib_run, "--model", model_path, "--alpha", str(ALPHA)]) == 0
    model = Model(model_path)
    reject = model.reject
    decider = Decider(model.labels, parse_config(BINS).bins, model.reject)
    assert decider.method == "split_conformal" and decider.cutoff == pytest.approx(1 - reject["qhat"])
    test = _rows(calib_run, "test")
    sets = [decider.decide(p).prediction_set for p in _probabilities(model, test)]
    coverage = np.mean([r["label"] in s for r, s in zip(test, sets)])
    assert coverage >= 1 - ALPHA - 0.05


def _numpy_qhat(scores, alpha):
    """The conformal quantile written another way: the inverted-CDF quantile at level ceil((n+1)(1-alpha))/n."""
    level = np.ceil((len(scores) + 1) * (1 - alpha) - 1e-9) / len(scores)
    return 1.0 if level > 1 else float(np.quantile(scores, level, method="inverted_cdf"))


def test_per_class_calibration_end_to_end(tiny_export, calib_run, tmp_path, capsys):
    model_path = _copy_model(tiny_export, "int8", tmp_path)
    assert main(["--run", calib_run, "--model", model_path, "--alpha", str(ALPHA), "--per-class"]) == 0
    model = Model(model_path)
    reject = model.reject
    labels = model.labels
    calib = _rows(calib_run, "calib")
    probabilities, truth = _probabilities(model, calib), _truth(model, calib)
    scores = 1.0 - probabilities[np.arange(len(calib)), truth].astype(np.float64)
    assert reject["method"] == "mondrian_conformal" and reject["subset"] == "calib" and reject["n"] == 400
    assert reject["n_per_class"] == {label: int(np.sum(truth == c)) for c, label in enumerate(labels)}
    for c, label in enumerate(labels):
        assert reject["qhat_per_class"][label] == pytest.approx(_numpy_qhat(scores[truth == c], ALPHA), abs=1e-6)
    assert "qhat" not in reject and f"per-class qhat at alpha={ALPHA}" in capsys.readouterr().out

    # The runner routes by the per-class cutoffs: class c is in the set iff p_c >= 1 - qhat_c.
    config = parse_config(BINS + "[bins.classes]\n" + "".join(f'{label} = "bin_{label}"\n' for label in labels))
    decider = Decider(labels, config.bins, reject)
    cutoffs = np.array([1.0 - reject["qhat_per_class"][label] for label in labels])
    assert decider.method == "mondrian_conformal" and decider.describe()["cutoffs"] == {
        label: round(c, 6) for label, c in zip(labels, cutoffs)
    }
    singles = 0
    for p in probabilities:
        decision = decider.decide(p)
        expected = {labels[c] for c in np.flatnonzero(p >= cutoffs)}
        assert set(decision.prediction_set) == expected
        sortable = len(expected) == 1 and reject["qhat_per_class"][next(iter(expected))] < 1
        assert decision.bin == (f"bin_{expected.pop()}" if sortable else "r")
        singles += decision.reason == "confident"
    assert reject["sorted_share"] == pytest.approx(singles / len(calib))


def test_per_class_warns_about_classes_with_too_few_items(tiny_export, tmp_path, capsys):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    assert main(["--run", tiny_export["run"], "--model", model_path, "--alpha", "0.2", "--per-class"]) == 0
    err = capsys.readouterr().err
    reject = Model(model_path).reject
    assert min_items(0.2) == 4
    for label, count in reject["n_per_class"].items():
        assert (f"class '{label}' has {count} {reject['subset']} images, too few" in err) == (count < 4)
        if count < 4:
            assert reject["qhat_per_class"][label] == 1.0


def _simulate(rng, n, margins, prior):
    """Softmax probabilities of a simulated classifier: logit of the true class raised by its class's margin."""
    truth = rng.choice(len(prior), size=n, p=prior)
    logits = rng.normal(size=(n, len(prior)))
    logits[np.arange(n), truth] += np.asarray(margins)[truth]
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32), truth


def test_per_class_covers_a_hard_rare_class_that_marginal_calibration_misses():
    """A rare valuable ore the model finds hard: the marginal threshold is set by the easy classes and misses most
    of it, the Mondrian one covers it (and every other class) at 1 - alpha. No model needed, only the rule."""
    labels, margins, prior = ["quartz", "feldspar", "mica", "gold_ore"], [4, 4, 4, 0.8], [0.3, 0.3, 0.3, 0.1]
    rng = np.random.default_rng(7)
    calibration, truth = _simulate(rng, 5000, margins, prior)
    future, future_truth = _simulate(rng, 20000, margins, prior)
    bins = parse_config(BINS).bins
    coverage = {}
    for per_class in (False, True):
        decider = Decider(labels, bins, reject_rule(calibration, truth, labels, ALPHA, per_class=per_class))
        covered = np.array([labels[t] in decider.decide(p).prediction_set for p, t in zip(future, future_truth)])
        coverage[per_class] = [covered[future_truth == c].mean() for c in range(len(labels))], covered.mean()
    slack = 0.03
    per_class, overall = coverage[True]
    assert min(per_class) >= 1 - ALPHA - slack and overall >= 1 - ALPHA - slack
    per_class, overall = coverage[False]
    assert overall >= 1 - ALPHA - slack  # the marginal promise holds ...
    assert per_class[3] < 1 - ALPHA - 0.3  # ... while the rare hard class is mostly outside its set


def test_the_decider_routes_by_per_class_cutoffs():
    bins = parse_config(BINS + '[bins.classes]\na = "bin_a"\nb = "bin_b"\nc = "bin_c"\nd = "bin_d"\n').bins
    qhats = {"a": 0.1, "b": 0.7, "c": 0.5, "d": 0.6}  # cutoffs 0.9, 0.3, 0.5, 0.4
    decider = Decider(list(qhats), bins, {"method": "mondrian_conformal", "alpha": 0.1, "qhat_per_class": qhats})
    cases = [
        ((0.95, 0.03, 0.01, 0.01), "a", ("a",), "bin_a"),
        ((0.60, 0.35, 0.03, 0.02), "a", ("b",), "bin_b"),  # b alone reaches its cutoff although a is more probable
        ((0.50, 0.05, 0.00, 0.45), "a", ("d",), "bin_d"),
        ((0.18, 0.32, 0.50, 0.00), "c", ("c", "b"), "r"),  # ambiguous
        ((0.85, 0.10, 0.03, 0.02), "a", (), "r"),  # nothing plausible
    ]
    for p, *expected in cases:
        decision = decider.decide(np.array(p, dtype=np.float32))
        assert [decision.label, decision.prediction_set, decision.bin] == expected
    # A class with qhat 1 (too few calibration items) is in every set and never sorted to, even alone in it.
    decider = Decider(list(qhats), bins, {"method": "mondrian_conformal", "qhat_per_class": {**qhats, "d": 1.0}})
    decision = decider.decide(np.array((0.85, 0.10, 0.03, 0.02), dtype=np.float32))
    assert decision.prediction_set == ("d",) and decision.bin == "r" and decision.reason == "uncertain"


def test_the_runner_reports_the_per_class_rule(tiny_export, write_config, make_runner, tmp_path):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    sidecar_path = model_path[: -len(".tflite")] + ".json"
    sidecar = json.load(open(sidecar_path))
    labels = sidecar["labels"]
    qhats = dict(zip(labels, [0.25, 0.5, 1.0, 0.0]))
    sidecar["reject"] = {"method": "mondrian_conformal", "alpha": 0.1, "qhat_per_class": qhats, "n": 40}
    json.dump(sidecar, open(sidecar_path, "w"))
    folder = tmp_path / "belt"
    folder.mkdir()
    for row in tiny_export["test_rows"]:
        shutil.copy(row["file"], folder / f"{row['label']}_{os.path.basename(row['file'])}")
    runner, events_path = make_runner(write_config(records={"stats_interval_s": 0.001}), model_path)
    summary = runner.run(Capture(FolderSource(str(folder), runner.clock), runner.clock, runner.events))
    rule = {"method": "mondrian_conformal", "alpha": 0.1, "cutoffs": {label: 1 - q for label, q in qhats.items()}}
    events = [json.loads(line) for line in open(events_path)]
    assert summary["reject"] == rule and events[0]["type"] == "start" and events[0]["reject"] == rule
    assert [e["reject"] for e in events if e["type"] == "stats"][-1] == rule
    for item in (e for e in events if e["type"] == "item"):
        # labels[2] (qhat 1) is in every set on no evidence, so no item is sorted, not even when it is alone.
        assert labels[2] in item["prediction_set"] and item["bin"] == "recheck"


@pytest.mark.parametrize("reject, problem", [
    ({"method": "bayes", "qhat": 0.1}, "method is not one of split_conformal, mondrian_conformal"),
    ({"method": "split_conformal", "qhat": 1.5}, "qhat is not a number between 0 and 1"),
    ({"method": "mondrian_conformal", "qhat": 0.1}, "qhat_per_class does not name exactly the sidecar's labels"),
    ({"method": "mondrian_conformal", "qhat_per_class": {"x": 0.1}}, "does not name exactly the sidecar's labels"),
    ({"method": "mondrian_conformal", "qhat_per_class": "bad"}, "qhat_per_class"),
])
def test_a_bad_reject_block_is_refused(tiny_export, tmp_path, reject, problem):
    sidecar = json.load(open(tiny_export["float32"][: -len(".tflite")] + ".json"))
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**sidecar, "reject": reject}))
    with pytest.raises(ModelError, match=problem) as error:
        read_sidecar(str(path))
    assert "mineralnet.conformal" in str(error.value)
    bad_value = {**sidecar, "reject": {"method": "mondrian_conformal",
                                        "qhat_per_class": {label: -1 for label in sidecar["labels"]}}}
    path.write_text(json.dumps(bad_value))
    with pytest.raises(ModelError, match=r"qhat_per_class\['.+'\] is not a number"):
        read_sidecar(str(path))


def test_an_old_split_conformal_sidecar_still_works(tiny_export, tmp_path):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    sidecar_path = model_path[: -len(".tflite")] + ".json"
    sidecar = json.load(open(sidecar_path))
    sidecar["reject"] = {"method": "split_conformal", "alpha": 0.05, "qhat": 0.3, "n": 13, "score": "1 - p_true"}
    json.dump(sidecar, open(sidecar_path, "w"))
    decider = Decider(sidecar["labels"], parse_config(BINS).bins, Model(model_path).reject)
    assert decider.describe() == {"method": "split_conformal", "alpha": 0.05, "cutoff": 0.7}
    p = np.array([0.75, 0.2, 0.05, 0.0], dtype=np.float32)
    assert decider.decide(p).prediction_set == (sidecar["labels"][0],) and decider.decide(p).bin == "x"


def test_coverage_on_the_test_rows_is_reported_overall_and_per_class(tiny_export, calib_run, tmp_path, capsys):
    """Issue 24 point 4: what the promise delivered on rows calibration never saw, by the runner's own rule."""
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    assert main(["--run", calib_run, "--model", model_path, "--alpha", str(ALPHA)]) == 0
    out = capsys.readouterr().out
    model = Model(model_path)
    test = _rows(calib_run, "test")
    probabilities, truth = _probabilities(model, test), _truth(model, test)
    covered = probabilities[np.arange(len(test)), truth] >= 1.0 - model.reject["qhat"]
    assert (f"coverage on the {len(test)} test images: {100 * covered.mean():.1f} % (promised >= "
            f"{100 * (1 - ALPHA):.1f} % over all items)") in out
    for c, label in enumerate(model.labels):
        assert f"{label} {100 * covered[truth == c].mean():.1f} % (n={int(np.sum(truth == c))})" in out


def test_qhat_one_says_nothing_is_sorted_and_per_class_says_it_replaces_the_stored_rule(tiny_export, tmp_path,
                                                                                       capsys):
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    assert main(["--run", tiny_export["run"], "--model", model_path, "--alpha", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "p >= 0.0000" not in out and "every class is in every prediction set: no item is sorted" in out
    assert "replaces" not in out  # the export's sidecar had no rule yet
    assert main(["--run", tiny_export["run"], "--model", model_path, "--alpha", "0.2", "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "replaces the rule stored in" in out and "split_conformal at alpha=0.05" in out


def test_target_grade_end_to_end(tiny_export, calib_run, tmp_path, capsys):
    """Issue 24 point 2 on 400 calib rows: the certified rule is stored, printed with its expected recovery, read
    by the runner, applied by the Decider; an unreachable target is refused in one line and stores nothing."""
    model_path = _copy_model(tiny_export, "float32", tmp_path)
    # The tiny model is soft (few items reach p >= 0.5): the strictest target one class reaches, at alpha 0.3.
    certified = None
    for target in (0.9, 0.8, 0.7, 0.6):
        for label in tiny_export["labels"]:
            if main(["--run", calib_run, "--model", model_path, "--alpha", "0.3",
                     "--target-grade", f"{label}={target}", "--delta", "0.2"]) == 0:
                certified = certified or (label, target)
                break
        if certified:
            break
    assert certified, capsys.readouterr().err
    label, target = certified
    out = capsys.readouterr().out
    assert f"'{label}' bin: grade >= {target} with probability >= 0.80" in out and "expected recovery" in out
    model = Model(model_path)
    rule = model.reject["grade_targets"][label]
    assert rule["method"] == "learn_then_test" and (rule["target"], rule["delta"]) == (target, 0.2)
    assert 0 <= rule["threshold"] <= 0.99 and 0 < rule["expected_recovery"] <= 1 and rule["calib_grade"] >= target
    decider = Decider(model.labels, parse_config(BINS).bins, model.reject)
    c = model.labels.index(label)
    for p in _probabilities(model, _rows(calib_run, "test")):
        decision = decider.decide(p)
        if decision.prediction_set == (label,) and decision.bin != "r":
            assert p[c] >= rule["threshold"]
    before = open(model_path[: -len(".tflite")] + ".json").read()
    assert main(["--run", calib_run, "--model", model_path, "--target-grade", f"{label}=0.9999"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs at least" in err
    assert open(model_path[: -len(".tflite")] + ".json").read() == before
