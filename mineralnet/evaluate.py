"""Evaluate a run's model on a subset of its own split: `python -m mineralnet.evaluate --run RUN`.

Writes RUN/eval/ (test subset; RUN/eval_val/ for --subset val): report.json, report.md, confusion_matrix.png.
"""

import argparse
import os
import sys

import numpy as np

from mineralnet import rundir
from mineralnet.data import DataError
from mineralnet.metrics import classification_report, report_markdown
from mineralnet.plots import plot_confusion_matrix
from mineralnet.utils import atomic_write_text, write_json


def predict_rows(model, rows, labels, image_size, batch_size=32):
    """Softmax probabilities of `model` on split rows, through the evaluation pipeline (no augmentation)."""
    from mineralnet.data.pipeline import make_dataset

    dataset = make_dataset([r["file"] for r in rows], [labels.index(r["label"]) for r in rows], len(labels),
                           image_size, batch_size, training=False, cache=False)
    return model.predict(dataset.map(lambda x, y: x), verbose=0)


def evaluate_run(run_path, subset="test", model_path=None, out_dir=None, data_dir=None):
    """Evaluate and write the report files; returns the report dict (with `predictions`, true/pred indices)."""
    run = rundir.Run(run_path)
    rows = run.rows(subset, data_dir)
    if not rows:
        raise DataError(f"the split of run '{run_path}' has no {subset} rows to evaluate.")
    model = run.load_model(model_path)
    probabilities = predict_rows(model, rows, run.labels, run.image_size)
    y_true = np.array([run.labels.index(r["label"]) for r in rows])
    y_pred = probabilities.argmax(axis=1)
    report = classification_report(y_true, y_pred, run.labels)
    report.update({"subset": subset, "model": os.path.abspath(model_path or run.file(rundir.MODEL))})
    out_dir = out_dir or run.file(rundir.EVAL_DIR if subset == "test" else f"{rundir.EVAL_DIR}_{subset}")
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "report.json"), report)
    atomic_write_text(os.path.join(out_dir, "report.md"), report_markdown(report, f"Evaluation on the {subset} subset"))
    plot_confusion_matrix(report["confusion_matrix"], run.labels, os.path.join(out_dir, "confusion_matrix.png"))
    print(f"{subset}: accuracy {report['accuracy']:.4f}, precision {report['precision_macro']:.4f}, recall "
          f"{report['recall_macro']:.4f} on {report['num_samples']} images -> {out_dir}")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory made by train.py")
    parser.add_argument("--subset", default="test", choices=["test", "val", "train"])
    parser.add_argument("--model", help="model file to evaluate instead of RUN/model.keras")
    parser.add_argument("--data", help="data directory, if it moved since training")
    parser.add_argument("--out", help="output folder (default RUN/eval)")
    args = parser.parse_args(argv)
    try:
        evaluate_run(args.run, args.subset, args.model, args.out, args.data)
    except (rundir.RunError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
