"""Evaluation reports that say when a model is weak: baselines, never-predicted classes, warnings, the marked
best epoch of curves.png (issue 10.8, issue 16.1)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mineralnet import rundir
from mineralnet.baseline import (MARGIN_POINTS, MIN_CLASS_IMAGES, features_baseline, image_features,
                                 majority_baseline, weak_model_lead, weak_model_warnings)
from mineralnet.data import read_split
from mineralnet.evaluate import main as evaluate_main
from mineralnet.metrics import classification_report, never_predicted, report_markdown
from mineralnet.plots import BEST_EPOCH_KEY, curves_figure, plot_curves

LABELS = ["a", "b", "c"]


def hand_report(y_true, y_pred, majority_accuracy=0.0, features_accuracy=None):
    """A report as evaluate_run builds it, from hand-made predictions and baseline figures."""
    report = classification_report(y_true, y_pred, LABELS)
    report["never_predicted"] = never_predicted(report)
    features = None if features_accuracy is None else {
        "accuracy": features_accuracy, "f1_macro": 0.5, "seconds": 1.0, "features": "test features",
        "classifier": "test classifier"}
    report["baseline"] = {"majority": {"label": "a", "train_images": 9, "accuracy": majority_accuracy,
                                       "f1_macro": 0.2},
                          "chance": {"accuracy": 1 / 3}, "features": features}
    report["warnings"] = weak_model_warnings(report)
    return report


def test_never_predicted_is_the_empty_columns_of_the_confusion_matrix():
    report = classification_report([0, 1, 2, 2], [0, 0, 0, 1], LABELS)
    assert never_predicted(report) == ["c"]
    assert never_predicted(classification_report([0, 1, 2], [1, 1, 1], LABELS)) == ["a", "c"]
    assert never_predicted(classification_report([0, 1, 2], [0, 1, 2], LABELS)) == []


def test_majority_baseline_against_hand_computed_values():
    # Training: 3 x b, 2 x a, 1 x c -> always "b"; scored on 5 evaluation images of which 2 are b.
    result = majority_baseline(["a", "b", "b", "c", "b", "a"], np.array([0, 1, 2, 1, 0]), LABELS)
    assert result["label"] == "b" and result["train_images"] == 3
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["f1_macro"] == pytest.approx((0 + 2 * (2 / 5) * 1 / (2 / 5 + 1) + 0) / 3)
    assert majority_baseline(["c", "a", "c", "a"], np.array([0]), LABELS)["label"] == "a"  # tie: label order


def test_warnings_name_each_weakness_and_only_those():
    # 12 images per class, model perfect on a and b, never predicts c: below nothing but the features margin.
    truth = np.repeat([0, 1, 2], 12)
    prediction = np.where(truth == 2, 0, truth)
    report = hand_report(truth, prediction, majority_accuracy=1 / 3, features_accuracy=0.64)
    assert report["accuracy"] == pytest.approx(24 / 36) and 24 / 36 < 0.64 + MARGIN_POINTS / 100
    assert report["never_predicted"] == ["c"]
    assert len(report["warnings"]) == 2
    assert "never predicts c" in report["warnings"][0]
    assert f"by {MARGIN_POINTS:g} points" in report["warnings"][1] and "--weights imagenet" in report["warnings"][1]
    # A lead of more than the margin over the features baseline, every class predicted: no warning at all.
    clean = hand_report(truth, truth, majority_accuracy=1 / 3, features_accuracy=1 - MARGIN_POINTS / 100 - 0.01)
    assert clean["warnings"] == [] and clean["never_predicted"] == []
    # Not beating the majority class (tie counts as not beating), and few images in two classes.
    small = hand_report([0, 0, 0, 1, 2] + [0] * 10, [0] * 15, majority_accuracy=13 / 15)
    assert small["accuracy"] == pytest.approx(13 / 15)
    text = " | ".join(small["warnings"])
    assert f"fewer than {MIN_CLASS_IMAGES} test images: b (1), c (1)" in text
    assert "does not beat always answering 'a'" in text and "never predicts b, c" in text


def test_features_margin_shrinks_to_half_the_errors_left_when_the_baseline_is_near_perfect():
    # On easy photos the baseline itself is near 100 %: no model can lead it by MARGIN_POINTS, so the lead asked
    # for is half of the baseline's remaining errors (the demo data: both at 100 %, no warning).
    truth = np.repeat([0, 1, 2], 34)  # 102 images: one error = 0.98 points
    perfect = hand_report(truth, truth, majority_accuracy=1 / 3, features_accuracy=1.0)
    assert perfect["warnings"] == []
    one_wrong = np.where(np.arange(102) == 0, 1, truth)  # 101 / 102 = 99.0 %
    two_wrong = np.where(np.arange(102) < 2, 1, truth)  # 100 / 102 = 98.0 %
    assert hand_report(truth, one_wrong, majority_accuracy=1 / 3, features_accuracy=0.97)["warnings"] == []
    behind = hand_report(truth, two_wrong, majority_accuracy=1 / 3, features_accuracy=0.97)["warnings"]
    assert len(behind) == 1 and "by 1.5 points" in behind[0]  # 98.0 % < 97 % + 3 / 2 points
    # Below 90 % the full margin holds: 5 points over a 0.80 baseline.
    assert weak_model_lead(0.80) == pytest.approx(MARGIN_POINTS / 100)
    assert weak_model_lead(0.97) == pytest.approx(0.015) and weak_model_lead(1.0) == 0.0


def test_markdown_has_warnings_and_the_baseline_rows():
    truth = np.repeat([0, 1, 2], 4)
    report = hand_report(truth, np.where(truth == 2, 1, truth), majority_accuracy=1 / 3, features_accuracy=0.75)
    markdown = report_markdown(report, "Evaluation")
    assert markdown.index("## Warnings") < markdown.index("| accuracy |")
    assert markdown.count("- **warning:**") == len(report["warnings"]) == 3  # few images, never c, features
    assert "| this model | 0.6667 |" in markdown
    assert "| features baseline (test classifier; 1.0 s) | 0.7500 | 0.5000 |" in markdown
    assert "| majority class ('a', most frequent in training) | 0.3333 | 0.2000 |" in markdown
    assert "| chance (1/3) | 0.3333 | |" in markdown
    assert "Never predicted on this subset: c." in markdown
    report["baseline"]["features"] = None
    assert "not run (--no-baseline)" in report_markdown(report)


def test_image_features_are_shares_and_separate_colours():
    rng = np.random.default_rng(0)
    red = np.clip(rng.normal((200, 40, 40), 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    blue = red[..., ::-1].copy()
    features_red, features_blue = image_features(red), image_features(blue)
    assert features_red.shape == features_blue.shape and np.isfinite(features_red).all()
    # Each histogram is a distribution: HSV 3 x 16 bins, LBP (8+2) and (16+2) codes, each summing to 1.
    sums = [features_red[i:j].sum() for i, j in ((0, 16), (16, 32), (32, 48), (48, 58), (58, 76))]
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    np.testing.assert_allclose(features_red[76:79], red.reshape(-1, 3).mean(0) / 255, atol=1e-5)
    assert not np.allclose(features_red[:16], features_blue[:16])  # hue histograms differ


def test_features_baseline_learns_the_demo_classes(demo_data):
    rows = read_split_of_demo(demo_data)
    labels = sorted({r["label"] for r in rows})
    train = [r for r in rows if r["subset"] == "train"]
    test = [r for r in rows if r["subset"] == "test"]
    result = features_baseline(train, test, labels)
    assert result["train_images"] == len(train) and result["image_size"] == 128 and result["seconds"] > 0
    assert 0 <= result["f1_macro"] <= 1 and 0 <= result["accuracy"] <= 1
    assert result["accuracy"] >= 0.75  # colour palettes and textures differ by design: far above chance (0.25)


def read_split_of_demo(demo_data):
    from mineralnet.data import make_split, scan_dataset

    _, samples, _ = scan_dataset(demo_data)
    return [dict(r, file=os.path.join(demo_data, r["path"])) for r in make_split(samples)]


def test_curves_mark_the_epoch_saved_as_model_keras(tmp_path):
    history = [{"epoch": e, "accuracy": a, "val_accuracy": v, "loss": 1 - a, "val_loss": 1 - v}
               for e, a, v in ((1, 0.5, 0.4), (2, 0.6, 0.7), (3, 0.7, 0.6))]
    figure = curves_figure(history, best_epoch=2)
    for axis in figure.axes:
        marks = [line for line in axis.get_lines() if line.get_label() == "model.keras (epoch 2)"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 2]
        assert "model.keras (epoch 2)" in [t.get_text() for t in axis.get_legend().get_texts()]
    assert not any("model.keras" in line.get_label() for a in curves_figure(history).axes for line in a.get_lines())
    plot_curves(history, str(tmp_path / "curves.png"), best_epoch=2)
    assert Image.open(tmp_path / "curves.png").text[BEST_EPOCH_KEY] == "2"


def test_tiny_run_report_has_baselines_and_warnings(tiny_run):
    run = rundir.Run(tiny_run)
    report = json.load(open(os.path.join(tiny_run, "eval", "report.json")))
    rows = read_split(run.file(rundir.SPLIT))
    train = [r["label"] for r in rows if r["subset"] == "train"]
    test = [r["label"] for r in rows if r["subset"] == "test"]
    most = max(run.labels, key=lambda label: (train.count(label), -run.labels.index(label)))
    majority = report["baseline"]["majority"]
    assert majority["label"] == most and majority["accuracy"] == pytest.approx(test.count(most) / len(test))
    assert report["baseline"]["chance"]["accuracy"] == pytest.approx(1 / len(run.labels))
    features = report["baseline"]["features"]
    assert 0 <= features["accuracy"] <= 1 and 0 <= features["f1_macro"] <= 1 and features["seconds"] > 0
    assert "LBP" in features["features"] and features["train_images"] == len(train)
    columns = np.array(report["confusion_matrix"]).sum(axis=0)
    assert report["never_predicted"] == [label for label, n in zip(run.labels, columns) if n == 0]
    assert all(test.count(label) < MIN_CLASS_IMAGES for label in run.labels)  # 16 images per class, 6:2:2
    assert f"fewer than {MIN_CLASS_IMAGES} test images" in report["warnings"][0]
    markdown = open(os.path.join(tiny_run, "eval", "report.md")).read()
    assert "## Against baselines" in markdown and f"| majority class ('{most}'" in markdown
    assert "| features baseline (" in markdown and "## Warnings" in markdown
    # curves.png marks the epoch that state.json (and so model.keras) names.
    state = json.load(open(os.path.join(tiny_run, "checkpoint", "state.json")))
    assert Image.open(os.path.join(tiny_run, "curves.png")).text[BEST_EPOCH_KEY] == str(state["best_epoch"])


def test_evaluate_cli_prints_warnings_and_skips_the_features_baseline(tiny_run, tmp_path, capsys):
    assert evaluate_main(["--run", tiny_run, "--out", str(tmp_path / "plain"), "--no-baseline"]) == 0
    captured = capsys.readouterr()
    report = json.load(open(tmp_path / "plain" / "report.json"))
    assert report["baseline"]["features"] is None and report["baseline"]["majority"]["accuracy"] >= 0
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(report["warnings"]) >= 1
    assert "features baseline" not in captured.out
    assert "not run (--no-baseline)" in open(tmp_path / "plain" / "report.md").read()
