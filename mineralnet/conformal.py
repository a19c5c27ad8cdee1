"""Calibrate an exported model's reject rule with split conformal prediction and store it in the sidecar.

    python -m mineralnet.conformal --run RUN --model RUN/export/model_int8.tflite --alpha 0.05 [--per-class]
        [--target-grade malachite=0.95 [--delta 0.1]]

Runs the .tflite model itself (so quantisation error is calibrated too) on the `calib` rows of RUN/split.csv:
rows that neither trained the model nor picked its best epoch, which is what the guarantee below needs. A split
from before `calib` existed (train/val/test) falls back to the `val` rows, and says so: those rows chose the best
epoch, so they look slightly better to the model than new items and the guarantee is only approximate.

Score = 1 - p_true; qhat = the ceil((n + 1)(1 - alpha))-th smallest score (1.0 when that rank exceeds n). The
edge runner's prediction set {classes with p >= 1 - qhat} then holds the true class with probability >= 1 - alpha
(marginal coverage, averaged over items and classes), provided the calibration items and the future items are
exchangeable (drawn alike: same ores, camera, ROI, lighting). With --per-class (Mondrian conformal) each class c
gets its own qhat_c from its own calibration items only, and class c is in the set iff p_c >= 1 - qhat_c: then
P(true class in set | true class = c) >= 1 - alpha for every class, so a rare valuable ore is covered as well as a
common one, where the marginal rule may cover it far worse. A class with fewer than 1/alpha - 1 calibration items
gets qhat_c = 1: it is in every set and the runner never sorts to it, so every item goes to recheck (warned).

Not guaranteed: the error rate among *sorted* items (one class in the set), which can exceed alpha; items unlike
the calibration photos (another camera ROI, lighting, ore body); drift over time. The share of calibration items
that would be sorted (`sorted_share`) is printed and stored: below 50 % the model sends most items to recheck.
A set that is empty or holds several classes sends the item to recheck. Only the sidecar's "reject" entry and
the drift alarm's "reference" (edge/drift.py's make_reference of the same probabilities) change, written
atomically. The sorting rule and the reference are edge's own code (edge.decision, edge.drift), imported here, so
what calibration measures is what the runner does.

Sort to a grade: --target-grade CLASS=G picks, on the same calib rows, the loosest threshold t on p_CLASS (from a
grid fixed in advance, GRADE_GRID, strictest first) such that the class's bin, {items the rule above sends there
with p_CLASS >= t}, has grade (purity, counted by images: photos have no mass) >= G with probability >= 1 - delta
over the calibration draw, items exchangeable (Learn-then-Test, Angelopoulos et al. 2021: an exact binomial
p-value for "grade < G" at each t, fixed-sequence testing, stop at the first t not rejected). It prints the
expected recovery (the calib rows' share of that class in the bin), stores "grade_targets" in the reject block
and the runner sends that class's items below t to recheck. Too few calib rows to certify: one line, exit 2,
saying how many it needs; nothing is written. The certified rule belongs to the reject rule computed with it:
any later calibration replaces both. The bin's eligible items come from that reject rule, fitted on the same calib
rows: the certificate treats the reject rule as given (its qhat is one order statistic, a slight dependence the
redraw test does not model: it uses the most-probable-class rule).
"""

import argparse
import math
import os
import sys

import numpy as np

from edge.decision import MONDRIAN_CONFORMAL, SPLIT_CONFORMAL, class_cutoffs, sorted_mask
from edge.drift import make_reference
from mineralnet import rundir
from mineralnet.data import load_image
from mineralnet.errors import MineralnetError, cli
from mineralnet.export.verify import make_interpreter, predict
from mineralnet.utils import read_json, sha256_file, write_json

SCORE = "1 - p_true"
DEFAULT_ALPHA = 0.05  # --alpha's default: train.py warns at split time when calib has too few rows for it
LOW_SORTED_SHARE = 0.5  # below this the runner sends most items to recheck: say so rather than let it go unseen


class CalibrationError(MineralnetError):
    """A problem with the run, the model or the sidecar; one line naming the file and the fix."""


def conformal_qhat(scores, alpha):
    """The split-conformal threshold: the ceil((n+1)(1-alpha))-th smallest score, or 1.0 if that rank exceeds n."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha}.")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)  # tolerance: (n+1)(1-alpha) is often a whole number
    return 1.0 if rank > n else float(scores[rank - 1])


def min_items(alpha):
    """The fewest calibration items for which conformal_qhat can be below 1 (n >= 1/alpha - 1)."""
    return math.ceil((1.0 - alpha) / alpha - 1e-9)


def reject_rule(probabilities, truth, labels, alpha, per_class=False, subset="calib"):
    """The sidecar's reject block from calibration probabilities (n, classes) and true class indices."""
    probabilities, truth = np.asarray(probabilities), np.asarray(truth)
    scores = 1.0 - probabilities[np.arange(len(truth)), truth].astype(np.float64)
    reject = {"method": MONDRIAN_CONFORMAL if per_class else SPLIT_CONFORMAL, "subset": subset, "n": len(truth),
              "alpha": alpha}
    if per_class:
        reject["n_per_class"] = {label: int(np.sum(truth == c)) for c, label in enumerate(labels)}
        reject["qhat_per_class"] = {
            label: conformal_qhat(scores[truth == c], alpha) for c, label in enumerate(labels)
        }
    else:
        reject["qhat"] = conformal_qhat(scores, alpha)
    sorted_items = sorted_mask(probabilities, class_cutoffs(reject, labels))  # the edge Decider's own rule
    wrong = sorted_items & (np.argmax(probabilities, axis=1) != truth)
    reject.update({
        "score": SCORE,
        "sorted_share": float(np.mean(sorted_items)),
        # Measured on the calibration items, NOT guaranteed: conformal bounds the set's miss rate, not this.
        "sorted_error": float(wrong.sum() / sorted_items.sum()) if sorted_items.any() else None,
    })
    return reject


# Learn-then-Test's candidate thresholds on a bin's class probability, strictest first, fixed before any data:
# 0.99 (an int8 output still reaches it) down to 0, where the bin is every item the reject rule sorts to it.
GRADE_GRID = 1.0 - np.geomspace(0.01, 1.0, 50)
GRADE_METHOD = "learn_then_test"
# The sequence starts at the strictest threshold whose bin holds GRADE_START times the fewest items that could certify
# the target (min_grade_items, when all are of the class): one item of another class there does not end it at once.
GRADE_START = 2


def binomial_cdf(k, n, q):
    """P(Binomial(n, q) <= k), summed in log space (no scipy)."""
    k, n = int(k), int(n)
    if k >= n:
        return 1.0
    j = np.arange(1, k + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - j + 1) - np.log(j))])
    j = np.arange(k + 1)
    return float(min(1.0, np.exp(log_choose + j * math.log(q) + (n - j) * math.log1p(-q)).sum()))


def min_grade_items(target, delta):
    """The fewest bin items (all of the class) that can certify grade >= target at level delta: target^n <= delta."""
    return math.ceil(math.log(delta) / math.log(target) - 1e-9)


def grade_threshold(p_c, is_c, target, delta, eligible=None, grid=GRADE_GRID):
    """Learn-then-Test (Angelopoulos et al. 2021) for one bin: the loosest grid threshold t whose bin
    {eligible items with p_c >= t} has grade >= target, certified with probability >= 1 - delta.

    For each t, strictest first, the null "grade(t) < target" is tested with the exact binomial p-value
    P(Binomial(n_t, 1 - target) <= k_t) (n_t calib items in the bin, k_t of another class): given n_t, the bin's
    items are exchangeable draws from the bin, so the p-value is valid. Fixed-sequence testing stops at the first
    t not rejected, which bounds the chance of certifying any t whose grade is below target by delta. The sequence
    starts at the strictest t whose bin holds at least GRADE_START * min_grade_items items (a bin of
    min_grade_items is certified only when spotless, and one item of another class would end the sequence): that start depends on how many calib items fall in each bin, never on their classes; the redraw test of
    tests/test_grade_target.py measures the guarantee with it. `eligible`:
    the items the runner would send to this bin without the grade rule (default: all). Returns threshold (None
    when not even the strictest t is certified), its calib grade and recovery (the expected recovery), n_bin and
    `needed` (the bin size where the sequence can start)."""
    p_c, is_c = np.asarray(p_c, dtype=np.float64), np.asarray(is_c, dtype=bool)
    eligible = np.ones(len(p_c), bool) if eligible is None else np.asarray(eligible, dtype=bool)
    chosen, needed = None, min_grade_items(target, delta)
    for t in grid:
        in_bin = eligible & (p_c >= t)
        n, k = int(in_bin.sum()), int((in_bin & ~is_c).sum())
        if chosen is None and n < GRADE_START * needed:
            continue  # too small a bin to certify unless spotless: the sequence starts further on
        if binomial_cdf(k, n, 1.0 - target) > delta:
            break
        chosen = (float(t), in_bin, n, k)
    rule = {"method": GRADE_METHOD, "target": target, "delta": delta, "threshold": None, "needed": GRADE_START * needed,
            "class_items": int(is_c.sum())}
    loosest = eligible & (p_c >= grid[-1])
    rule.update({"n_loosest": int(loosest.sum()), "k_loosest": int((loosest & ~is_c).sum())})
    if chosen is not None:
        t, in_bin, n, k = chosen
        rule.update({"threshold": t, "n_bin": n, "calib_grade": (n - k) / n,
                     "expected_recovery": float((in_bin & is_c).sum() / max(is_c.sum(), 1))})
    return rule


def grade_rules(probabilities, truth, labels, reject, targets, delta):
    """{label: grade rule} for `targets` ({label: grade}) on the calibration rows, each bin being the items the
    runner sends there under `reject` (edge.decision's rule); CalibrationError when one cannot be certified."""
    probabilities, truth = np.asarray(probabilities), np.asarray(truth)
    cutoffs = class_cutoffs(reject, labels)
    sorted_items = sorted_mask(probabilities, cutoffs)
    set_class = np.argmax(probabilities >= cutoffs[None, :], axis=1)  # the one class of a sorted item's set
    rules = {}
    for label, target in targets.items():
        c = labels.index(label)
        eligible = sorted_items & (set_class == c)
        rule = grade_threshold(probabilities[:, c], truth == c, target, delta, eligible)
        if rule["threshold"] is None and rule["class_items"] >= rule["needed"] and not eligible.any():
            raise CalibrationError(
                f"cannot certify grade >= {target} for '{label}': the reject rule at alpha={reject['alpha']} sends no "
                f"{reject['subset']} image to its bin; raise --alpha, add calib images or improve the model."
            )
        if rule["threshold"] is None:
            have = rule["class_items"]
            raise CalibrationError(
                f"cannot certify grade >= {target} for '{label}' at delta={delta}: that needs at least "
                f"{rule['needed']} {reject['subset']} images in its bin, nearly all of '{label}'; there are {have} "
                f"{label} {reject['subset']} images"
                + (" in all: add calib images (a larger calib share)." if have < rule["needed"] else
                   f", and the reject rule sorts {rule['n_loosest']} images to its bin, {rule['k_loosest']} of "
                   "another class: lower the target, raise --delta or --alpha, or improve the model.")
            )
        for key in ("class_items", "needed", "n_loosest", "k_loosest"):
            del rule[key]
        rules[label] = rule
    return rules


def tflite_probabilities(model_path, files):
    """Class probabilities of the .tflite model for image files, preprocessed by the training contract."""
    with open(model_path, "rb") as handle:
        interpreter = make_interpreter(handle.read(), threads=None)
    size = int(interpreter.get_input_details()[0]["shape"][1])
    return predict(interpreter, np.stack([load_image(path, size) for path in files]))


def calibration_rows(run):
    """(subset, rows): the `calib` rows, or the `val` rows of an older 3-part split."""
    for subset in ("calib", "val"):
        rows = run.rows(subset)
        if rows:
            return subset, rows
    raise CalibrationError(
        f"split '{run.split_file}' has neither calib nor val rows: re-split with a calib share."
    )


def _sidecar_of(model_path, sidecar_path=None):
    """The sidecar path (default: beside the model); CalibrationError if either file is missing."""
    sidecar_path = sidecar_path or os.path.splitext(model_path)[0] + ".json"
    for path, fix in (
        (model_path, "pass --model with an exported .tflite file"),
        (sidecar_path, "export the model with its sidecar first, or pass --sidecar"),
    ):
        if not os.path.isfile(path):
            raise CalibrationError(f"'{path}' does not exist: {fix}.")
    return sidecar_path


def open_run(run):
    """`run` (a rundir.Run or its path) with the files calibration reads: config, labels and split (no model)."""
    try:
        return rundir.Run.of(run, required=(rundir.CONFIG, rundir.LABELS, rundir.SPLIT))
    except rundir.RunError as error:
        raise CalibrationError(str(error)) from None


def calibrate(run, model_path, alpha, sidecar_path=None, per_class=False, targets=None, delta=0.1):
    """Compute the reject rule on the calib (else val) rows of `run` (a rundir.Run or its path), with a certified
    grade rule for each of `targets` ({label: grade}, at `delta`), and write it into the sidecar; returns it."""
    sidecar_path = _sidecar_of(model_path, sidecar_path)
    run = open_run(run)
    sidecar = read_json(sidecar_path)
    if sidecar.get("sha256") != sha256_file(model_path):
        raise CalibrationError(
            f"sidecar '{sidecar_path}' was written for another model than '{model_path}' (sha256 differs): pass the "
            "--sidecar exported with this model."
        )
    labels = run.labels
    if sidecar.get("labels") != labels:
        raise CalibrationError(
            f"sidecar '{sidecar_path}' lists labels {sidecar.get('labels')} but run '{run.path}' has {labels}: "
            "calibrate a model exported from this run."
        )
    subset, rows = calibration_rows(run)
    probabilities = tflite_probabilities(model_path, [r["file"] for r in rows])
    truth = np.array([labels.index(r["label"]) for r in rows])
    reject = reject_rule(probabilities, truth, labels, alpha, per_class, subset)
    for label in targets or {}:
        if label not in labels:
            raise CalibrationError(f"--target-grade names '{label}', not a class of this model ({', '.join(labels)}).")
    if targets:  # before anything is written: a target that cannot be certified leaves the sidecar as it was
        reject["grade_targets"] = grade_rules(probabilities, truth, labels, reject, targets, delta)
    previous = sidecar.get("reject")
    if previous is not None:
        print(f"calibrate: this replaces the rule stored in '{sidecar_path}' ({describe_rule(previous)}).")
    # The drift alarm's reference, binned by edge/drift.py itself: the runner compares live items with it.
    write_json(sidecar_path, {**sidecar, "reject": reject, "reference": make_reference(probabilities, subset)})
    return reject


def describe_rule(reject):
    """A stored reject rule in a few words: its method and alpha (and grade targets, when it has any)."""
    words = f"{reject.get('method')} at alpha={reject.get('alpha')}"
    targets = reject.get("grade_targets") or {}
    if targets:
        words += ", grade targets " + ", ".join(f"{label}={rule.get('target')}" for label, rule in targets.items())
    return words


def coverage(probabilities, truth, labels, reject):
    """How often the runner's prediction set {c : p_c >= cutoff_c} held the true class: overall and per class
    (None for a class without rows)."""
    probabilities, truth = np.asarray(probabilities), np.asarray(truth)
    cutoffs = class_cutoffs(reject, labels)
    covered = probabilities[np.arange(len(truth)), truth] >= cutoffs[truth]
    return {
        "n": len(truth), "overall": float(covered.mean()) if len(truth) else None,
        "per_class": {label: {"n": int(np.sum(truth == c)),
                              "coverage": float(covered[truth == c].mean()) if np.any(truth == c) else None}
                      for c, label in enumerate(labels)},
    }


def coverage_on_test_rows(run, model_path, reject):
    """coverage() on the run's test rows (None when the split has none): rows neither training nor calibration
    saw, so what the promise delivered."""
    rows = run.rows("test")
    if not rows:
        return None
    truth = np.array([run.labels.index(r["label"]) for r in rows])
    return coverage(tflite_probabilities(model_path, [r["file"] for r in rows]), truth, run.labels, reject)


def _percent(share):
    return "-" if share is None else f"{100 * share:.1f} %"


def report_coverage(measured, alpha, per_class):
    """Print the test rows' coverage beside the promise (per class: promised for each with --per-class)."""
    if measured is None:
        print("calibrate: the split has no test rows: coverage not measured.")
        return
    promise = f"promised >= {100 * (1 - alpha):.1f} %" + (" for every class" if per_class else " over all items")
    classes = ", ".join(
        f"{label} {_percent(row['coverage'])} (n={row['n']})"
        for label, row in measured["per_class"].items()
    )
    print(f"calibrate: coverage on the {measured['n']} test images: {100 * measured['overall']:.1f} % ({promise}); "
          f"per class: {classes}.")


def report(reject, split_path):
    """Print what was calibrated on, the threshold(s), the sorted share and every reason to distrust them."""
    alpha, n, subset = reject["alpha"], reject["n"], reject["subset"]
    if subset == "calib":
        print(f"calibrate: using the {n} calib rows of '{split_path}' (they neither trained the model nor picked "
              "its best epoch).")
    else:
        print(
            f"calibrate: warning: '{split_path}' has no calib rows (a train/val/test split), so the {n} val rows are "
            "used. They also picked the best epoch, so coverage >= 1 - alpha holds only approximately: re-split "
            "with a calib share (train/val/calib/test) and retrain for the full guarantee.", file=sys.stderr,
        )
    if reject["method"] == MONDRIAN_CONFORMAL:
        qhats = ", ".join(
            f"{label} {q:.4f} (n={reject['n_per_class'][label]})" for label, q in reject["qhat_per_class"].items()
        )
        print(f"calibrate: per-class qhat at alpha={alpha}: {qhats}; class c is in the set when p_c >= 1 - qhat_c.")
        for label, count in reject["n_per_class"].items():
            if count < min_items(alpha):
                print(
                    f"calibrate: warning: class '{label}' has {count} {subset} images, too few for alpha={alpha} "
                    f"(needs at least {min_items(alpha)}); its qhat is 1, so it is in every prediction set and "
                    f"every item goes to recheck. Add {subset} images of that class or raise --alpha.",
                    file=sys.stderr,
                )
    else:
        if reject["qhat"] >= 1.0:
            print(f"calibrate: qhat={reject['qhat']:.4f} from {n} {subset} images (alpha={alpha}): every class is in "
                  "every prediction set: no item is sorted, all go to recheck.")
        else:
            print(
                f"calibrate: qhat={reject['qhat']:.4f} from {n} {subset} images (alpha={alpha}); an item is sorted "
                f"only when exactly one class has p >= {1 - reject['qhat']:.4f}."
            )
        if reject["qhat"] >= 1.0 and n < min_items(alpha):
            print(
                f"calibrate: warning: {n} {subset} images are too few for alpha={alpha} (needs at least "
                f"{min_items(alpha)}); every item will go to recheck. Add {subset} images or raise --alpha.",
                file=sys.stderr,
            )
    share = reject["sorted_share"]
    error = "" if reject["sorted_error"] is None else (
        f"; {100 * reject['sorted_error']:.1f} % of those had the wrong class (measured here, not guaranteed)"
    )
    print(f"calibrate: {100 * share:.1f} % of the {n} {subset} images would be sorted (one class in the set), "
          f"{100 * (1 - share):.1f} % sent to recheck{error}.")
    for label, rule in (reject.get("grade_targets") or {}).items():
        print(
            f"calibrate: '{label}' bin: grade >= {rule['target']} with probability >= {1 - rule['delta']:.2f} "
            f"(Learn-then-Test on {n} {subset} images, exchangeable items assumed): items sorted to it need "
            f"p >= {rule['threshold']:.4f}, the others go to recheck; expected recovery "
            f"{100 * rule['expected_recovery']:.1f} % of the {label} items (grade {rule['calib_grade']:.3f} on the "
            f"{rule['n_bin']} calib images in the bin). Counted by images, not by mass."
        )
    if share < LOW_SORTED_SHARE:
        print(
            f"calibrate: warning: only {100 * share:.1f} % of items would be sorted at alpha={alpha}: the runner "
            "would send most items to recheck. Raise --alpha, or improve the model (more or better training "
            "images).", file=sys.stderr,
        )


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory (config.json, labels.json, split.csv)")
    parser.add_argument("--model", required=True, help="exported .tflite model to calibrate")
    parser.add_argument("--sidecar", help="its sidecar JSON (default: the model path with .json)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"allowed miss rate of the prediction set (default {DEFAULT_ALPHA})")
    parser.add_argument(
        "--per-class", action="store_true",
        help="one threshold per class (Mondrian conformal): every class, rare ones too, covered at 1 - alpha; like "
             "every calibration, it replaces the rule stored in the sidecar",
    )
    parser.add_argument(
        "--target-grade", action="append", default=[], metavar="CLASS=GRADE",
        help="certify that class's bin at this grade (purity, 0-1) with probability >= 1 - delta (Learn-then-Test "
             "on the calib rows): its items below the chosen threshold go to recheck; repeat for several classes",
    )
    parser.add_argument("--delta", type=float, default=0.1,
                        help="allowed chance that a --target-grade bin falls below its target (default 0.1)")
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must be between 0 and 1 (exclusive), got {args.alpha}.")
    if not 0.0 < args.delta < 1.0:
        parser.error(f"--delta must be between 0 and 1 (exclusive), got {args.delta}.")
    targets = {}
    for item in args.target_grade:
        label, _, grade = item.partition("=")
        try:
            targets[label] = float(grade)
        except ValueError:
            parser.error(f"--target-grade {item!r}: write CLASS=GRADE, e.g. malachite=0.95.")
        if not label or not 0.0 < targets[label] < 1.0:
            parser.error(f"--target-grade {item!r}: write CLASS=GRADE with a grade between 0 and 1 (exclusive).")
    _sidecar_of(args.model, args.sidecar)  # the model and sidecar are checked before the run, as calibrate does
    run = open_run(args.run)
    reject = calibrate(run, args.model, args.alpha, args.sidecar, args.per_class, targets, args.delta)
    report(reject, run.split_file)
    report_coverage(coverage_on_test_rows(run, args.model, reject), args.alpha, args.per_class)


if __name__ == "__main__":
    sys.exit(main())
