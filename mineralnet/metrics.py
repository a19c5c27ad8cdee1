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


GRADES = (0.80, 0.90, 0.95, 0.99)  # the grades at which report.md gives each bin's recovery


def _grade_key(grade):
    return f"{grade:.2f}"


def grade_recovery(probabilities, y_true, labels, grades=GRADES):
    """Grade against recovery for each class as the target bin, as the threshold on that class's probability moves.

    For class c and threshold t the bin holds the items with p_c >= t (items tied at t enter together): grade = the
    share of c among them (purity), recovery = the share of all c items that are in it. One point per distinct
    p_c, strictest first. Counted by images: the photos carry no mass, so these are not mass-weighted grades.
    `recovery_at_grade[g]` is the best recovery among thresholds whose grade >= g, None when no threshold reaches
    g (or the class has no item)."""
    probabilities, y_true = np.asarray(probabilities, dtype=np.float64), np.asarray(y_true, dtype=int)
    per_class = {}
    for c, label in enumerate(labels):
        p, hit = probabilities[:, c], y_true == c
        support = int(hit.sum())
        order = np.argsort(-p, kind="stable")
        p_sorted, hits = p[order], np.cumsum(hit[order])
        last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]  # the bin at threshold t ends at the last item >= t
        points = []
        for index in np.flatnonzero(last_of_tie):
            items, found = index + 1, int(hits[index])
            points.append({"threshold": float(p_sorted[index]), "grade": found / items,
                           "recovery": found / support if support else 0.0, "items": int(items)})
        at_grade = {}
        for grade in grades:
            reached = [q["recovery"] for q in points if q["grade"] >= grade - 1e-12] if support else []
            at_grade[_grade_key(grade)] = max(reached) if reached else None
        per_class[label] = {"support": support, "points": points, "recovery_at_grade": at_grade}
    return {"basis": "images", "grades": list(grades), "per_class": per_class}


def grade_recovery_markdown(curves):
    """report.md's table: each class's recovery at the listed grades, or "not reachable"."""
    keys = [_grade_key(g) for g in curves["grades"]]
    lines = ["## Grade and recovery", "",
             "Each class as the target bin, its threshold on that class's probability moving: recovery at each grade "
             "(purity) it can reach on these rows. Counted by images (the photos carry no mass: not mass-weighted "
             "grades). The curves are in the PNG beside this report.", "",
             f"| class | images | recovery at grade {keys[0]} | " + " | ".join(keys[1:]) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for label, curve in curves["per_class"].items():
        cells = ["not reachable" if curve["recovery_at_grade"][k] is None else f"{curve['recovery_at_grade'][k]:.3f}"
                 for k in keys]
        lines.append(f"| {label} | {curve['support']} | " + " | ".join(cells) + " |")
    return lines
