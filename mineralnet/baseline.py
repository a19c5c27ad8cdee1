"""Baselines printed beside every evaluation, so a weak model is seen to be weak.

- majority: always answer the class most frequent in the run's training rows (ties: the first in label order);
- chance: 1 / number of classes;
- features: a classical colour + texture model fitted in seconds on the run's training rows: HSV histograms,
  uniform LBP texture histograms at two radii and RGB mean/std of the 128 px image (decoded with the same
  `load_image` as the model's input), standardised, into a multinomial logistic regression.

A network that does not clearly beat the features baseline has learned no more than the colour and grain of the
specimens: typical of a large model trained from scratch on a few hundred photos.

scikit-learn and scikit-image are imported inside the functions that need them: they are training-side
dependencies (never used by edge/), and `import mineralnet` does not load them.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mineralnet.data import load_image
from mineralnet.metrics import classification_report

FEATURE_SIZE = 128  # px: large enough for the LBP texture of a specimen, small enough to decode ~100 images/s
HSV_BINS = 16  # per channel
LBP_SETTINGS = ((8, 1), (16, 2))  # (neighbours, radius): fine grain and coarser texture
# The model must beat the features baseline by this many accuracy points, or the report warns. Why 5: on a test
# subset of ~190 images (MINET-7's) one standard error of an accuracy near 70 % is sqrt(0.7 * 0.3 / 190) = 3.3
# points, so a smaller lead is within what re-drawing the test photos could change; and a network that is not
# clearly better than colour + texture histograms has not learned what it is there for.
MARGIN_POINTS = 5.0  # capped near 100 %: weak_model_lead
MIN_CLASS_IMAGES = 10  # below this, one image moves a class's recall by more than 10 points
# Classifier chosen on MINET-7 (6:2:2 split, seed 0: 565 training, 188 validation, 188 test photos) by validation
# accuracy: logistic regression C=1 val 0.702 / test 0.606 accuracy (test macro F1 0.547), C=0.1 val 0.691 / test
# 0.617; linear SVM C=0.1 val 0.686 / test 0.638, C=0.01 val 0.676 / test 0.617. All within one standard error
# (3.4 points) of each other; 9 s for the whole fit-and-score on 2 idle CPU cores (24 s on busy ones), nearly all
# of it decoding.
CLASSIFIERS = {"logistic": "logistic regression (multinomial, C=1) on standardised features",
               "svm": "linear SVM (C=0.1) on standardised features"}
DESCRIPTION = (f"{FEATURE_SIZE} px image: HSV histograms ({HSV_BINS} bins per channel), uniform LBP histograms of "
               f"the grey image ({', '.join(f'P={p} R={r}' for p, r in LBP_SETTINGS)}), RGB mean and std")


def image_features(pixels):
    """The feature vector of one (size, size, 3) uint8 RGB image: every part is a share or a 0-1 statistic, so
    images of any size give comparable values."""
    from PIL import Image
    from skimage.feature import local_binary_pattern

    image = Image.fromarray(pixels)
    hsv = np.asarray(image.convert("HSV"), dtype=np.int64).reshape(-1, 3)
    parts = [np.bincount(hsv[:, c] * HSV_BINS // 256, minlength=HSV_BINS) / len(hsv) for c in range(3)]
    grey = np.asarray(image.convert("L"))
    for points, radius in LBP_SETTINGS:
        codes = local_binary_pattern(grey, points, radius, "uniform").astype(np.int64).ravel()
        parts.append(np.bincount(codes, minlength=points + 2) / codes.size)  # uniform LBP has points + 2 codes
    rgb = pixels.reshape(-1, 3) / 255.0
    parts += [rgb.mean(axis=0), rgb.std(axis=0)]
    return np.concatenate(parts).astype(np.float32)


def extract_features(files, size=FEATURE_SIZE, workers=None):
    """(len(files), n) features, decoded and computed in a thread pool (Pillow and the LBP loop release the GIL)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(lambda path: image_features(load_image(path, size)), files)))


def make_classifier(kind="logistic"):
    """Standardisation then a linear classifier; `kind` "svm" is the linear SVM it was compared with."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    model = LogisticRegression(C=1.0, max_iter=2000) if kind == "logistic" else LinearSVC(C=0.1, max_iter=5000)
    return make_pipeline(StandardScaler(), model)


def features_baseline(train_rows, eval_rows, labels, kind="logistic"):
    """Fit the features baseline on `train_rows` and score it on `eval_rows` (split rows with `file` and `label`).

    Returns {accuracy, f1_macro, seconds, features, classifier, image_size, train_images}; each file is decoded
    once even when it is in both lists (evaluating the training subset).
    """
    started = time.time()
    files = sorted({r["file"] for r in train_rows} | {r["file"] for r in eval_rows})
    table = dict(zip(files, extract_features(files)))
    train_x = np.stack([table[r["file"]] for r in train_rows])
    train_y = np.array([labels.index(r["label"]) for r in train_rows])
    eval_y = np.array([labels.index(r["label"]) for r in eval_rows])
    classifier = make_classifier(kind).fit(train_x, train_y)
    predicted = classifier.predict(np.stack([table[r["file"]] for r in eval_rows]))
    report = classification_report(eval_y, predicted, labels)
    return {"accuracy": report["accuracy"], "f1_macro": report["f1_macro"],
            "seconds": round(time.time() - started, 2), "features": DESCRIPTION,
            "classifier": CLASSIFIERS[kind],
            "image_size": FEATURE_SIZE, "train_images": len(train_rows)}


def majority_baseline(train_labels, y_true, labels):
    """Accuracy and macro F1 of always answering the training rows' most frequent class on `y_true` (indices)."""
    counts = np.bincount([labels.index(label) for label in train_labels], minlength=len(labels))
    majority = int(counts.argmax())  # argmax takes the first of tied classes, i.e. label order
    report = classification_report(y_true, np.full(len(y_true), majority), labels)
    return {"label": labels[majority], "train_images": int(counts[majority]), "accuracy": report["accuracy"],
            "f1_macro": report["f1_macro"]}


def weak_model_lead(baseline_accuracy):
    """The accuracy lead (0-1) a model needs over the features baseline: MARGIN_POINTS, or half the baseline's
    remaining errors when that is less (above a 90 % baseline), since no model can lead a 97 % baseline by 5 points,
    nor a 100 % one (the demo data) at all."""
    return min(MARGIN_POINTS / 100, (1.0 - baseline_accuracy) / 2)


def weak_model_warnings(report, subset="test", in_use=((), None)):
    """One sentence per reason not to trust the model (or its figures) on this subset: classes with fewer than
    MIN_CLASS_IMAGES images, classes never predicted, no lead over the majority class or over the features
    baseline by weak_model_lead. `report` is an evaluation report with `baseline` and `never_predicted`;
    `in_use` (model names, weights) of the run, so that the advice never names what it already uses."""
    from mineralnet.training.advice import weak_model_advice

    warnings = []
    small = [(label, row["support"]) for label, row in report["per_class"].items()
             if row["support"] < MIN_CLASS_IMAGES]
    if small:
        warnings.append(
            f"{len(small)} class(es) have fewer than {MIN_CLASS_IMAGES} {subset} images: "
            f"{', '.join(f'{label} ({count})' for label, count in small)}; one image moves their recall by 10 "
            "points or more, so their per-class figures are noise: add photos of those classes.")
    if report["never_predicted"]:
        warnings.append(
            f"the model never predicts {', '.join(report['never_predicted'])} on the {report['num_samples']} "
            f"{subset} images: items of those classes would all go to other bins.")
    accuracy, majority = report["accuracy"], report["baseline"]["majority"]
    if accuracy <= majority["accuracy"]:
        warnings.append(
            f"the model (accuracy {accuracy:.4f}) does not beat always answering '{majority['label']}', the most "
            f"frequent training class ({majority['accuracy']:.4f}): it has learned nothing usable for this subset.")
    features = report["baseline"].get("features")
    lead = weak_model_lead(features["accuracy"]) if features else None
    if features and accuracy < features["accuracy"] + lead:
        warnings.append(
            f"the model (accuracy {accuracy:.4f}) does not beat the colour + texture features baseline "
            f"({features['accuracy']:.4f}) by {100 * lead:.3g} points: it has learned little beyond colour and "
            f"grain. {weak_model_advice(*in_use)}")
    return warnings
