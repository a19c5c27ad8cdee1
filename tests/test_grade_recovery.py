"""Grade-recovery curves (issue 24 point 1): each class as the target bin, its probability threshold moving; counted
by images, the photos having no mass."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mineralnet import rundir
from mineralnet.metrics import grade_recovery, grade_recovery_markdown

# Eight items, three classes. Class a's probabilities, best first, with the true class:
#   0.95 a, 0.90 b, 0.85 a, 0.80 a, 0.70 a, 0.60 b, 0.50 a, 0.10 b  (5 items are a)
P_A = [0.95, 0.90, 0.85, 0.80, 0.70, 0.60, 0.50, 0.10]
TRUTH = [0, 1, 0, 0, 0, 1, 0, 1]
P_C = [0.01, 0.05, 0.02, 0.03, 0.04, 0.30, 0.06, 0.20]  # no item is c


def probabilities():
    p_a, p_c = np.array(P_A), np.array(P_C)
    return np.stack([p_a, 1 - p_a - p_c, p_c], axis=1)


def test_grade_and_recovery_against_hand_computed_values():
    curves = grade_recovery(probabilities(), TRUTH, ["a", "b", "c"])
    assert curves["basis"] == "images"
    a = curves["per_class"]["a"]
    assert a["support"] == 5
    # threshold t: bin = {p_a >= t}; grade = a's share of the bin, recovery = share of all a's in the bin.
    expected = [(0.95, 1 / 1, 1 / 5, 1), (0.90, 1 / 2, 1 / 5, 2), (0.85, 2 / 3, 2 / 5, 3), (0.80, 3 / 4, 3 / 5, 4),
                (0.70, 4 / 5, 4 / 5, 5), (0.60, 4 / 6, 4 / 5, 6), (0.50, 5 / 7, 5 / 5, 7), (0.10, 5 / 8, 5 / 5, 8)]
    got = [(p["threshold"], p["grade"], p["recovery"], p["items"]) for p in a["points"]]
    assert len(got) == len(expected)
    for point, want in zip(got, expected):
        assert point == pytest.approx(want)
    # The best recovery among thresholds reaching each grade.
    assert a["recovery_at_grade"] == pytest.approx({"0.80": 0.8, "0.90": 0.2, "0.95": 0.2, "0.99": 0.2})
    # b: p_b best first 0.95(b? no) ... the top item by p_b is index 7 (p_b 0.70, true b): grade 1 at recovery 1/3.
    b = curves["per_class"]["b"]
    assert b["support"] == 3 and b["points"][0]["grade"] == 1.0 and b["points"][0]["recovery"] == pytest.approx(1 / 3)
    # c has no item: no grade is reachable, and the table says so.
    c = curves["per_class"]["c"]
    assert c["support"] == 0 and c["recovery_at_grade"] == {"0.80": None, "0.90": None, "0.95": None, "0.99": None}


def test_ties_enter_the_bin_together():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    points = grade_recovery(p, [0, 1, 0], ["a", "b"])["per_class"]["a"]["points"]
    assert [(q["threshold"], q["items"]) for q in points] == [(0.9, 2), (0.5, 3)]
    assert points[0]["grade"] == 0.5 and points[0]["recovery"] == 0.5


def test_markdown_table_says_not_reachable_and_counts_images():
    text = "\n".join(grade_recovery_markdown(grade_recovery(probabilities(), TRUTH, ["a", "b", "c"])))
    assert "| class | images | recovery at grade 0.80 | 0.90 | 0.95 | 0.99 |" in text
    assert "| a | 5 | 0.800 | 0.200 | 0.200 | 0.200 |" in text
    assert "| c | 0 | not reachable | not reachable | not reachable | not reachable |" in text
    assert "by images" in text and "mass" in text


def test_the_curves_png(tmp_path):
    from mineralnet.plots import plot_grade_recovery

    path = str(tmp_path / rundir.GRADE_RECOVERY)
    plot_grade_recovery(grade_recovery(probabilities(), TRUTH, ["a", "b", "c"]), path)
    assert Image.open(path).format == "PNG"


def test_every_evaluation_has_the_grade_recovery_table_png_and_points(tiny_run, tmp_path):
    from mineralnet.evaluate import evaluate_run

    out = tmp_path / "eval"
    report = evaluate_run(tiny_run, out_dir=str(out), baseline=False)
    saved = json.load(open(out / rundir.REPORT))
    assert saved["grade_recovery"] == report["grade_recovery"]
    assert set(saved["grade_recovery"]["per_class"]) == set(report["labels"])
    for label, curve in saved["grade_recovery"]["per_class"].items():
        assert curve["support"] == report["per_class"][label]["support"]
        assert all(0 <= p["grade"] <= 1 and 0 <= p["recovery"] <= 1 for p in curve["points"])
    assert "## Grade and recovery" in (out / rundir.REPORT_MARKDOWN).read_text()
    assert os.path.getsize(out / rundir.GRADE_RECOVERY) > 0
