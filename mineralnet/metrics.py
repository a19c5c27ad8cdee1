"""Classification metrics as the paper reports them (accuracy, macro precision/recall/F1, confusion matrix),
in NumPy so every tool (evaluation, export gate, edge calibration) computes them the same way."""

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes):
    """Counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def classification_report(y_true, y_pred, labels):
    """accuracy, precision_macro, recall_macro, f1_macro, num_samples, per_class, confusion_matrix.

    Macro averages run over the classes present in y_true (a class absent from the evaluated subset has no
    defined recall); a class never predicted has precision 0.
    """
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    present = support > 0
    total = int(matrix.sum())
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
        "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "num_samples": total,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }


def never_predicted(report):
    """Labels the model output for no image of the report's subset (an empty column of the confusion matrix):
    on a sorting belt those bins would stay empty whatever arrives."""
    predicted = np.asarray(report["confusion_matrix"]).sum(axis=0)
    return [label for label, count in zip(report["labels"], predicted) if count == 0]


def baseline_markdown(report):
    """The model's accuracy and macro F1 beside those of the report's `baseline` entries (see mineralnet.baseline)."""
    baseline = report["baseline"]
    majority, features = baseline["majority"], baseline.get("features")
    lines = ["## Against baselines", "", "| | accuracy | F1 (macro) |", "|---|---:|---:|",
             f"| this model | {report['accuracy']:.4f} | {report['f1_macro']:.4f} |"]
    if features:
        lines.append(f"| features baseline ({features['classifier']}; {features['seconds']:.1f} s) "
                     f"| {features['accuracy']:.4f} | {features['f1_macro']:.4f} |")
    lines += [f"| majority class ('{majority['label']}', most frequent in training) | {majority['accuracy']:.4f} "
              f"| {majority['f1_macro']:.4f} |",
              f"| chance (1/{len(report['labels'])}) | {baseline['chance']['accuracy']:.4f} | |", ""]
    lines.append(f"Features baseline: {features['features']}." if features else "Features baseline: not run "
                 "(--no-baseline).")
    return lines


def report_markdown(report, title="Evaluation"):
    """The report as Markdown: warnings first, summary, baselines (when the report has them), per class,
    confusion matrix."""
    labels = report["labels"]
    lines = [f"# {title}", ""]
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- **warning:** {w}" for w in report["warnings"]] + [""]
    lines += [
        "| accuracy | precision (macro) | recall (macro) | F1 (macro) | images |",
        "|---:|---:|---:|---:|---:|",
        f"| {report['accuracy']:.4f} | {report['precision_macro']:.4f} | {report['recall_macro']:.4f} "
        f"| {report['f1_macro']:.4f} | {report['num_samples']} |", "",
    ]
    if "baseline" in report:
        lines += baseline_markdown(report) + [""]
    if report.get("never_predicted"):
        lines += [f"Never predicted on this subset: {', '.join(report['never_predicted'])}.", ""]
    lines += [
        "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|",
    ]
    for label in labels:
        row = report["per_class"][label]
        lines.append(f"| {label} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |")
    lines += ["", "## Confusion matrix (rows = true, columns = predicted)", "",
              "| true \\ predicted | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for label, counts in zip(labels, report["confusion_matrix"]):
        lines.append(f"| {label} | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(lines) + "\n"
