"""Evaluate a run's model on a subset of its own split: `python -m mineralnet.evaluate --run RUN`.

Writes RUN/eval/ (test subset; RUN/eval_val/ for --subset val): report.json, report.md, confusion_matrix.png,
grade_recovery.png (each class as the target bin: grade against recovery as its probability threshold moves).
With --tta the report also gives test-time-augmentation figures, as an extra: the main figures are always those
of a single view, which is what the exported models and the edge runner deliver. With --belt the report also
gives the accuracy on the same photos as the sorter's belt crops (mineralnet/data/belt.py), beside the photos'.

Every report sets the model beside baselines (mineralnet.baseline: majority class, chance, and a colour + texture
features model fitted on the run's training rows; --no-baseline skips the latter) and lists, in report.md and as
`warning:` lines, what makes the model or its figures untrustworthy: classes never predicted, classes with few
images, no lead over the baselines.
"""

import argparse
import os
import sys

import numpy as np

from mineralnet import rundir
from mineralnet.baseline import features_baseline, majority_baseline, weak_model_warnings
from mineralnet.data import SUBSETS, DataError
from mineralnet.errors import cli
from mineralnet.metrics import (classification_report, grade_recovery, grade_recovery_markdown, never_predicted,
                                report_markdown)
from mineralnet.training.filesystem import check_writable
from mineralnet.utils import atomic_write_text, write_json


TTA_VIEWS = 8  # the four rotations by 90 degrees, each also mirrored: a specimen has no "up" on the belt


def dihedral_view(images, view):
    """View `view` (0-7) of a batch: rotated by 90 * (view % 4) degrees, mirrored when view >= 4."""
    import tensorflow as tf

    images = tf.image.rot90(images, k=view % 4)
    return tf.image.flip_left_right(images) if view >= 4 else images


def predict_rows(model, rows, labels, image_size, batch_size=32, views=1):
    """Softmax probabilities of `model` on split rows, through the evaluation pipeline (no augmentation);
    with views > 1, the mean over the first `views` dihedral views (test-time augmentation)."""
    from mineralnet.data.pipeline import make_dataset

    dataset = make_dataset([r["file"] for r in rows], [labels.index(r["label"]) for r in rows], len(labels),
                           image_size, batch_size, training=False, cache=views > 1).map(lambda x, y: x)
    per_view = [model.predict(dataset.map(lambda x, v=v: dihedral_view(x, v)), verbose=0) for v in range(views)]
    return np.mean(per_view, axis=0)


def belt_figures(model, rows, labels, image_size, y_pred, belt=None):
    """Accuracy on `rows` as belt crops (each specimen cut out and laid on `belt`, a picture of the empty belt, or the
    synthetic one; seeded), beside the photos' own accuracy (`y_pred`) on the same rows: those with a clean
    specimen."""
    from PIL import Image

    from edge.preprocess import open_rgb, resize_rgb
    from mineralnet.data.belt import belt_crop, load_belt

    belt_pixels, rng = load_belt(belt), np.random.default_rng(0)
    crops, kept = [], []
    for index, row in enumerate(rows):
        crop = belt_crop(np.asarray(open_rgb(row["file"])), belt_pixels, rng)
        if crop is not None:
            crops.append(resize_rgb(Image.fromarray(crop), image_size))
            kept.append(index)
    figures = {"belt": belt or "synthetic", "rows": len(kept), "of": len(rows), "accuracy": None,
               "photo_accuracy": None}
    if kept:
        truth = np.array([labels.index(rows[i]["label"]) for i in kept])
        predicted = model.predict(np.stack(crops).astype(np.float32), verbose=0).argmax(axis=1)
        figures["accuracy"] = float(np.mean(predicted == truth))
        figures["photo_accuracy"] = float(np.mean(y_pred[kept] == truth))
    return figures


def in_use(run):
    """(model names, starting weights) of `run`, for advice that must not name them again: an ensemble's members'
    models, and their weights when all members share them (None: not recorded, or mixed)."""
    config = run.config if isinstance(run.config, dict) else {}
    models = config.get("member_models") or [config.get("model")]
    weights = config.get("member_weights") or [config.get("weights")]
    return tuple(models), weights[0] if len(set(weights)) == 1 else None


def evaluate_run(run, subset="test", model_path=None, out_dir=None, data_dir=None, tta=False, baseline=True,
                 belt=False):
    """Evaluate `run` (a rundir.Run or its path) and write the report files; returns the report dict. `baseline`
    False skips the features baseline (the majority and chance figures are always there); `belt` (True for the
    synthetic belt, or an empty-belt picture's path) adds the accuracy on belt crops."""
    run = rundir.Run.of(run)
    rows = run.rows(subset, data_dir)
    if not rows:
        raise DataError(f"the split of run '{run.path}' has no {subset} rows to evaluate.")
    model = run.load_model(model_path)
    probabilities = predict_rows(model, rows, run.labels, run.image_size)
    y_true = np.array([run.labels.index(r["label"]) for r in rows])
    y_pred = probabilities.argmax(axis=1)
    report = classification_report(y_true, y_pred, run.labels)
    report.update({"subset": subset, "model": os.path.abspath(model_path or run.model_file)})
    train_rows = rows if subset == "train" else run.rows("train", data_dir)
    report["never_predicted"] = never_predicted(report)
    report["baseline"] = {
        "majority": majority_baseline([r["label"] for r in train_rows], y_true, run.labels),
        "chance": {"accuracy": 1 / len(run.labels)},
        "features": features_baseline(train_rows, rows, run.labels) if baseline else None,
    }
    report["warnings"] = weak_model_warnings(report, subset, in_use(run))
    report["grade_recovery"] = grade_recovery(probabilities, y_true, run.labels)
    if tta:
        tta_pred = predict_rows(model, rows, run.labels, run.image_size, views=TTA_VIEWS).argmax(axis=1)
        tta_report = classification_report(y_true, tta_pred, run.labels)
        report["tta"] = {"views": TTA_VIEWS, **{k: tta_report[k] for k in ("accuracy", "precision_macro",
                                                                            "recall_macro", "f1_macro")}}
    if belt:
        report["belt_crops"] = belt_figures(model, rows, run.labels, run.image_size, y_pred,
                                            belt if isinstance(belt, str) else None)
    out_dir = out_dir or run.eval_dir(subset)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, rundir.REPORT), report)
    markdown = report_markdown(report, f"Evaluation on the {subset} subset")
    if tta:
        markdown += (f"\nWith test-time augmentation ({TTA_VIEWS} rotations/mirrors averaged; an extra, not what the "
                     f"exported model does): accuracy {report['tta']['accuracy']:.4f}, precision "
                     f"{report['tta']['precision_macro']:.4f}, recall {report['tta']['recall_macro']:.4f}.\n")
    if belt:
        crops = report["belt_crops"]
        markdown += (f"\nOn belt crops (each specimen cut out and laid on the {crops['belt']} belt, cropped as the sorter "
                     f"crops a particle; {crops['rows']} of {crops['of']} photos had a clean specimen): accuracy "
                     f"{_fixed(crops['accuracy'])}, the photos of the same specimens {_fixed(crops['photo_accuracy'])}."
                     "\n")
    markdown += "\n" + "\n".join(grade_recovery_markdown(report["grade_recovery"])) + "\n"
    atomic_write_text(os.path.join(out_dir, rundir.REPORT_MARKDOWN), markdown)
    from mineralnet.plots import plot_confusion_matrix, plot_grade_recovery  # here: matplotlib takes most of a second

    plot_confusion_matrix(report["confusion_matrix"], run.labels, os.path.join(out_dir, rundir.CONFUSION_MATRIX))
    plot_grade_recovery(report["grade_recovery"], os.path.join(out_dir, rundir.GRADE_RECOVERY))
    print(f"{subset}: accuracy {report['accuracy']:.4f}, precision {report['precision_macro']:.4f}, recall "
          f"{report['recall_macro']:.4f} on {report['num_samples']} images -> {out_dir}"
          + (f" (TTA x{TTA_VIEWS}: accuracy {report['tta']['accuracy']:.4f})" if tta else ""))
    features = report["baseline"]["features"]
    if features:
        print(f"{subset}: features baseline accuracy {features['accuracy']:.4f}, F1 {features['f1_macro']:.4f} "
              f"({features['seconds']:.1f} s); majority class {report['baseline']['majority']['accuracy']:.4f}")
    if belt:
        crops = report["belt_crops"]
        print(f"{subset}: belt crops accuracy {_fixed(crops['accuracy'])} on {crops['rows']} of {crops['of']} "
              f"images (photos of the same: {_fixed(crops['photo_accuracy'])})")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return report


def _fixed(value):
    return "-" if value is None else f"{value:.4f}"


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory made by train.py")
    parser.add_argument("--subset", default="test", choices=SUBSETS)
    parser.add_argument("--model", help="model file to evaluate instead of RUN/model.keras")
    parser.add_argument("--data", help="data directory, if it moved since training")
    parser.add_argument("--out", help="output folder (default RUN/eval)")
    parser.add_argument("--tta", action="store_true", help=f"also report test-time augmentation ({TTA_VIEWS} views)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the colour + texture features baseline (it decodes every training and evaluated "
                             "image once more: seconds for a thousand photos, long for a huge dataset)")
    parser.add_argument("--belt", nargs="?", const=True, default=False, metavar="EMPTY_BELT.png",
                        help="also report the accuracy on belt crops: each photo's specimen cut out and laid on this "
                             "picture of the empty belt (default: a synthetic dark belt), cropped as the sorter does")
    args = parser.parse_args(argv)
    if args.out:
        check_writable(args.out)  # a read-only --out: one line before the model loads
    evaluate_run(args.run, args.subset, args.model, args.out, args.data, args.tta, args.baseline, args.belt)


if __name__ == "__main__":
    sys.exit(main())
