"""The export's word on a weak model: the evaluation's warnings on the test rows, printed and written into
report.md, and a refusal (one line, nothing written) of a model that does not beat always answering the most
frequent training class, unless --allow-weak.

A verified TFLite file of a model that learned nothing looks like any other on the device: the sorting line
would run, and every item would land in one bin. The figures are those mineralnet.evaluate writes (the same
functions), from the Keras predictions the export takes anyway as its reference; the colour + texture features
baseline is reused from RUN/eval/report.json when that evaluated the same test rows (it depends on the split only,
not on the model), and left out otherwise (fitting it takes seconds to minutes).
"""

import os

import numpy as np

from mineralnet import rundir
from mineralnet.baseline import majority_baseline, weak_model_warnings
from mineralnet.export.errors import ExportError
from mineralnet.metrics import classification_report, never_predicted
from mineralnet.utils import read_json


def _saved_features_baseline(run, test_images):
    """The features baseline of the run's last test evaluation, when it scored the same number of test rows."""
    path = os.path.join(run.eval_dir("test"), rundir.REPORT)
    try:
        saved = read_json(path)
    except (OSError, ValueError):
        return None
    if saved.get("subset") != "test" or saved.get("num_samples") != test_images:
        return None
    return (saved.get("baseline") or {}).get("features")


def weak_model_check(run, y_true, y_pred, allow_weak=False):
    """{"accuracy", "majority", "warnings", "allowed_weak"} of the model's test predictions `y_pred` (label
    indices); ExportError unless `allow_weak` when the model does not beat the majority baseline."""
    from mineralnet.evaluate import in_use

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    report = classification_report(y_true, y_pred, run.labels)
    report["never_predicted"] = never_predicted(report)
    majority = majority_baseline([row["label"] for row in run.rows("train")], y_true, run.labels)
    report["baseline"] = {"majority": majority, "chance": {"accuracy": 1 / len(run.labels)},
                          "features": _saved_features_baseline(run, len(y_true))}
    weak = report["accuracy"] <= majority["accuracy"]
    if weak and not allow_weak:
        raise ExportError(
            f"the model '{run.model_file}' (test accuracy {report['accuracy']:.4f}) does not beat always answering "
            f"'{majority['label']}' ({majority['accuracy']:.4f}) on the {len(y_true)} test images: every item would "
            "go to a few bins. Nothing was written; retrain (see the run's eval/report.md), or pass --allow-weak to "
            "export it anyway.")
    return {"accuracy": report["accuracy"], "majority": majority,
            "warnings": weak_model_warnings(report, "test", in_use(run)), "allowed_weak": bool(weak)}
