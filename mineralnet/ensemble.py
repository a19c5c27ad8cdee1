"""One model from several finished runs: `python -m mineralnet.ensemble RUN1 RUN2 [...] --out RUN`.

Without pretrained weights, one small model trained on a few hundred photos per class is a lottery: seven seeds of
one simple_cnn recipe scored 72.7-77.5 % on MINET-7's test photos, and the best validation epoch does not say which
seed is the lucky one. Averaging the probabilities of several seeds is the plain remedy: 1.7-3 points over the
seeds' mean in the three ensembles measured (issue 16, attempts a27-a28 in benchmarks/results/minet/attempts.md).
The members are train.py runs of one split (the same command with `--split FIRST/split.csv --seed 1`, `--seed 2`,
...); the result is a run directory like theirs whose model.keras holds them all and outputs the mean of their
probabilities, so evaluation (with its baselines), Grad-CAM (the mean of the members' maps), export (verified TFLite
files) and the edge runner take it as one model; inference costs the members' sum.

The runs must share their labels, split and image size: an ensemble of models that saw different test photos in
training would report a test accuracy that is not one. Averaging is no sure gain either (three seeds of one weak
recipe collapsed onto the majority class, 56 % against members' 56-72 %): the ensemble is scored beside each member
on the val rows first, and refused, unless --force, when it is below its best member.
"""

import argparse
import os
import sys

import numpy as np

from mineralnet import rundir
from mineralnet.data.split import split_rows
from mineralnet.errors import MineralnetError, cli
from mineralnet.models.head import PREDICTIONS
from mineralnet.training.filesystem import check_writable

ENSEMBLE = "ensemble"  # the Keras name of the combined model and the `model` of its run config


class EnsembleError(MineralnetError):
    """Runs that cannot be averaged into one model; the message names the run and the fix."""


def check_members(runs):
    """EnsembleError unless there are at least two runs with one set of labels, one split and one image size."""
    if len(runs) < 2:
        raise EnsembleError("an ensemble needs at least two runs: pass the --out folders of train.py runs trained with "
                            "the same --split and different --seed.")
    first = runs[0]
    first_split = split_rows(first.rows())
    for run in runs[1:]:
        for what, mine, theirs in (("labels", run.labels, first.labels), ("split", split_rows(run.rows()), first_split),
                                   ("image size", run.image_size, first.image_size)):
            if mine != theirs:
                raise EnsembleError(f"run '{run.path}' has other {what} than '{first.path}': train every member with "
                                    f"the same --split ({first.split_file}) and --image-size.")


def build_ensemble(models):
    """A Keras model averaging the softmax outputs of `models` (same input shape and classes) on one input; each
    member keeps its layers and weights under the name member_N."""
    import keras

    shape = tuple(models[0].input_shape[1:])
    inputs = keras.Input(shape, name="image")
    outputs = []
    for index, member in enumerate(models):
        if tuple(member.input_shape[1:]) != shape or member.output_shape != models[0].output_shape:
            raise EnsembleError(f"member {index} takes {member.input_shape[1:]} and gives {member.output_shape[1:]}, "
                                f"member 0 {shape} and {models[0].output_shape[1:]}: train them alike.")
        member.name = f"member_{index}"
        output = member(inputs)
        outputs.append(output[0] if isinstance(output, (list, tuple)) else output)  # loaded models give a list
    average = keras.layers.Average(dtype="float32", name=PREDICTIONS)(outputs)
    return keras.Model(inputs, average, name=ENSEMBLE)


def ensemble_members(model):
    """The member models of a model made by build_ensemble (also once saved and loaded), else []."""
    import keras

    if model.name != ENSEMBLE:
        return []
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def compare_with_members(member_probabilities, truth):
    """{"ensemble": accuracy of the mean of the members' probabilities, "members": each member's accuracy} on one
    subset: the ensemble's model outputs exactly that mean (build_ensemble), so it is scored without running it."""
    truth = np.asarray(truth)
    members = [float(np.mean(np.argmax(p, axis=1) == truth)) for p in member_probabilities]
    average = np.mean(member_probabilities, axis=0)
    return {"images": int(len(truth)), "ensemble": float(np.mean(average.argmax(axis=1) == truth)),
            "members": members}


def check_against_members(runs, models, force=False):
    """The ensemble beside its members on the val rows (the subset that selects models; test stays for the
    final measure), one line each; EnsembleError unless `force` when it is worse than its best member: averaging
    that lowers accuracy (e.g. members collapsing onto the majority class) must not pass on as an improvement.
    Returns the comparison (None without val rows)."""
    from mineralnet.evaluate import predict_rows

    run = runs[0]
    rows = run.rows("val")
    if not rows:
        print(f"warning: split '{run.split_file}' has no val rows: the ensemble is not compared with its members.",
              file=sys.stderr)
        return None
    truth = [run.labels.index(row["label"]) for row in rows]
    compared = compare_with_members([predict_rows(m, rows, run.labels, run.image_size) for m in models], truth)
    for member, accuracy in zip(runs, compared["members"]):
        print(f"val: member {member.path} accuracy {accuracy:.4f}")
    print(f"val: ensemble accuracy {compared['ensemble']:.4f} on {compared['images']} images")
    best = int(np.argmax(compared["members"]))
    if compared["ensemble"] < compared["members"][best]:
        problem = (f"the ensemble's val accuracy {compared['ensemble']:.4f} is below its best member's "
                   f"({compared['members'][best]:.4f}, '{runs[best].path}') on the {compared['images']} val images")
        if not force:
            raise EnsembleError(f"{problem}: use that run alone or train better members; --force writes the ensemble "
                                "anyway.")
        print(f"warning: {problem} (written because of --force).", file=sys.stderr)
    return compared


def ensemble_runs(paths, out, tta=False, baseline=True, force=False):
    """Write run directory `out` holding the ensemble of the runs at `paths` (refused, unless `force`, when it is
    worse than its best member on val: check_against_members), evaluate it on the test subset and return the
    report, which carries the val comparison as `ensemble_val`."""
    from mineralnet.evaluate import evaluate_run
    from mineralnet.utils import atomic_path, write_json

    runs = [rundir.Run(path) for path in paths]
    check_members(runs)
    target = rundir.Run(out, required=None)
    if os.path.exists(target.model_file) or os.path.exists(target.config_file):
        raise EnsembleError(f"'{target.path}' already holds a run: pass a new --out.")
    models = [run.load_model() for run in runs]
    compared = check_against_members(runs, models, force)
    model = build_ensemble(models)
    target.write_labels(runs[0].labels)
    target.write_split(runs[0].rows())
    with atomic_path(target.model_file) as tmp:
        model.save(tmp)
    # Written last: a folder without config.json is not a finished run (rundir.FINISHED).
    target.write_config({"model": ENSEMBLE, "members": [run.path for run in runs],
                         "member_models": [run.train_config.model for run in runs],
                         "member_weights": [run.train_config.weights for run in runs],
                         "data": runs[0].train_config.data, "image_size": runs[0].image_size,
                         "val_comparison": compared})
    print(f"ensemble of {len(runs)} runs -> {target.model_file}")
    report = evaluate_run(target, tta=tta, baseline=baseline)
    report["ensemble_val"] = compared
    write_json(os.path.join(target.eval_dir(), rundir.REPORT), report)
    return report


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished train.py run directories (same --split, other --seed)")
    parser.add_argument("--out", required=True, help="new run directory for the ensemble")
    parser.add_argument("--tta", action="store_true", help="also report test-time augmentation")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the colour + texture features baseline in the evaluation")
    parser.add_argument("--force", action="store_true",
                        help="write the ensemble even when its val accuracy is below its best member's")
    args = parser.parse_args(argv)
    check_writable(args.out)  # a read-only --out: one line before the members load
    ensemble_runs(args.runs, args.out, args.tta, args.baseline, args.force)


if __name__ == "__main__":
    sys.exit(main())
