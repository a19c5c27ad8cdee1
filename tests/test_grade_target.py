"""A grade target with a finite-sample guarantee (issue 24 point 2): `python -m mineralnet.conformal --target-grade
LABEL=G [--delta D]` picks the bin's threshold by Learn-then-Test on the calib rows; the runner applies it."""

import json
import os
import shutil

import numpy as np
import pytest

from edge.config import parse_config
from edge.decision import Decider
from edge.model import Model, ModelError, read_sidecar
from mineralnet.conformal import GRADE_GRID, binomial_cdf, grade_threshold, main, min_grade_items

BINS = '[bins]\ndefault = "x"\nrecheck = "r"\n[belt]\nspeed_mm_s = 1\ncamera_to_ejector_mm = 1\n'


def _pool(seed=0, n=20000):
    """A fixed pool of a simulated 3-class classifier's softmax outputs: class 0 (the valuable ore) is 20 %."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n, p=[0.2, 0.4, 0.4])
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), truth] += 2.0
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=1, keepdims=True), truth


def _grade(p_c, is_c, eligible, threshold):
    in_bin = eligible & (p_c >= threshold)
    return is_c[in_bin].mean() if in_bin.any() else 1.0


def test_binomial_cdf_against_hand_computed_values():
    assert binomial_cdf(0, 10, 0.05) == pytest.approx(0.95 ** 10)
    assert binomial_cdf(1, 3, 0.5) == pytest.approx(0.5)
    assert binomial_cdf(3, 3, 0.2) == pytest.approx(1.0)
    assert min_grade_items(0.95, 0.1) == 45 and 0.95 ** 45 <= 0.1 < 0.95 ** 44


def test_the_grade_target_holds_in_at_least_1_minus_delta_of_redrawn_calib_sets_and_a_plain_threshold_does_not():
    """1,000 exchangeable redraws of calib and test rows from one pool: Learn-then-Test's bin reaches the target on
    the test rows in >= 1 - delta of them; the smallest threshold whose calib grade reaches it fails far more."""
    probabilities, truth = _pool()
    p_c, is_c, eligible = probabilities[:, 0], truth == 0, probabilities.argmax(axis=1) == 0
    target, delta, n_calib = 0.9, 0.1, 3000
    rng = np.random.default_rng(1)
    ltt_holds, plain_holds, recoveries = [], [], []
    for _ in range(1000):
        order = rng.permutation(len(truth))
        calib, test = order[:n_calib], order[n_calib:]
        rule = grade_threshold(p_c[calib], is_c[calib], target, delta, eligible[calib])
        assert rule["threshold"] is not None
        ltt_holds.append(_grade(p_c[test], is_c[test], eligible[test], rule["threshold"]) >= target)
        recoveries.append(rule["expected_recovery"])
        calib_grades = [_grade(p_c[calib], is_c[calib], eligible[calib], t) for t in GRADE_GRID]
        plain = min(t for t, g in zip(GRADE_GRID, calib_grades) if g >= target)
        plain_holds.append(_grade(p_c[test], is_c[test], eligible[test], plain) >= target)
    assert np.mean(ltt_holds) >= 1 - delta
    assert np.mean(plain_holds) < 1 - delta
    assert 0.05 < np.mean(recoveries) < 1  # it does sort something


def test_too_few_calib_rows_cannot_certify():
    probabilities, truth = _pool(n=60)
    rule = grade_threshold(probabilities[:, 0], truth == 0, 0.95, 0.1, probabilities.argmax(axis=1) == 0)
    assert rule["threshold"] is None and rule["needed"] == 2 * 45


def test_the_decider_sends_items_below_the_grade_threshold_to_recheck():
    labels = ["malachite", "quartz"]
    config = parse_config(BINS + '[bins.classes]\nmalachite = "m"\nquartz = "q"\n')
    reject = {"method": "split_conformal", "alpha": 0.1, "qhat": 0.5,
              "grade_targets": {"malachite": {"target": 0.95, "delta": 0.1, "threshold": 0.9}}}
    decider = Decider(labels, config.bins, reject)
    assert decider.decide(np.array([0.95, 0.05])).bin == "m"
    below = decider.decide(np.array([0.85, 0.15]))
    assert below.bin == "r" and below.reason == "uncertain" and below.prediction_set == ("malachite",)
    assert decider.decide(np.array([0.2, 0.8])).bin == "q"  # quartz has no grade rule
    assert decider.describe()["grade_targets"] == {"malachite": {"target": 0.95, "threshold": 0.9}}


@pytest.mark.parametrize("targets, problem", [
    ({"gold": {"target": 0.9, "delta": 0.1, "threshold": 0.8}}, "grade_targets names 'gold'"),
    ({"a": {"target": 0.9, "delta": 0.1, "threshold": 1.5}}, "grade_targets['a']"),
    ({"a": {"target": 1.0, "delta": 0.1, "threshold": 0.8}}, "grade_targets['a']"),
    ("x", "grade_targets is not"),
])
def test_a_bad_grade_rule_is_refused(tiny_export, tmp_path, targets, problem):
    sidecar = json.load(open(tiny_export["float32"][: -len(".tflite")] + ".json"))
    labels = sidecar["labels"]
    targets = {labels[0] if k == "a" else k: v for k, v in targets.items()} if isinstance(targets, dict) else targets
    sidecar["reject"] = {"method": "split_conformal", "alpha": 0.1, "qhat": 0.5, "grade_targets": targets}
    problem = problem.replace("'a'", f"'{labels[0]}'")
    path = tmp_path / "s.json"
    path.write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        read_sidecar(str(path))


def _copy_model(tiny_export, directory):
    model = os.path.join(directory, "model_float32.tflite")
    shutil.copy(tiny_export["float32"], model)
    shutil.copy(tiny_export["float32"][: -len(".tflite")] + ".json", model[: -len(".tflite")] + ".json")
    return model


def test_too_few_calib_rows_are_refused_in_one_line(tiny_export, tmp_path, capsys):
    model_path = _copy_model(tiny_export, tmp_path)
    before = open(model_path[: -len(".tflite")] + ".json").read()
    label = tiny_export["labels"][0]
    assert main(["--run", tiny_export["run"], "--model", model_path, "--alpha", "0.2",
                 "--target-grade", f"{label}=0.95"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs at least 90 calib images" in err and label in err
    assert open(model_path[: -len(".tflite")] + ".json").read() == before  # nothing stored
