"""`train(config)`: data checks, split, model, the two-phase fit (optional frozen-backbone warm-up, then full
fine-tuning), resumable checkpoints and the final evaluation, all into one run directory."""

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import warnings

import keras

from mineralnet import rundir
from mineralnet.data import DataError, make_demo_dataset, make_split, read_split, scan_dataset
from mineralnet.data.pipeline import DecodedImages, class_weights, make_dataset, steps_per_epoch
from mineralnet.data.split import HASH, SUBSETS, duplicate_report, parse_ratios
from mineralnet.models import build_model, model_info, register_all
from mineralnet.training.advice import calib_advice, resolve_auto, weak_model_advice
from mineralnet.training.checkpoint import RunCheckpoint, read_state
from mineralnet.training.config import DEFAULT_OUT, ConfigError, resolve_config, resume_changes
from mineralnet.training.distribute import (ValidationLossOfPadding, even_batches, make_strategy, split_cpu,
                                            weights_digest)
from mineralnet.training.ema import ema_callbacks, restore_raw_weights
from mineralnet.training.filesystem import check_writable, disk_full_as_one_line
from mineralnet.training.progress import progress_callbacks
from mineralnet.utils import read_json

def _prepare_data(config):
    """Scan the data, make or reuse the split; raises before anything is written.

    Training reads only the train and val rows (`_arrays`); calib and test rows stay unseen by the fit, the
    choice of the best epoch and early stopping. Identical files in several classes (label conflicts) and
    near-identical pictures across classes are printed here, one line each, and listed in data_report.json.
    """
    data_dir = config.data
    classes, samples, report = scan_dataset(data_dir, config.limit_per_class, config.seed)
    report.update(duplicate_report(samples))
    split_file = config.split
    if split_file:
        rows = read_split(split_file, data_dir)
        unknown = sorted({r["label"] for r in rows} - set(classes))
        if unknown:
            raise DataError(f"split '{split_file}' names classes {unknown} that are not folders of '{data_dir}'.")
        usable = {s.path for s in samples}
        dropped = [r["path"] for r in rows if r["path"] not in usable]
        rows = [r for r in rows if r["path"] in usable]
        report["split_rows_dropped"] = dropped
        digests = {s.path: s.sha256 for s in samples}
        for row in rows:  # an older split.csv without hashes: this run binds its labels to the files as scanned
            row[HASH] = digests[row["path"]]
    else:
        rows = make_split(samples, parse_ratios(config.split_ratios), config.seed)
    report["per_subset"] = {s: sum(r["subset"] == s for r in rows) for s in SUBSETS}
    if not split_file:
        advice = calib_advice(samples, config.split_ratios, config.seed, report["per_subset"]["calib"])
        if advice:
            print(f"warning: {advice}", file=sys.stderr)
    for subset in ("train", "val"):
        if not report["per_subset"][subset]:
            raise DataError(f"the split of '{data_dir}' has no {subset} images: use other --split-ratios or more data.")
    subset_of = {r["path"]: r["subset"] for r in rows}
    for paths in report["label_conflicts"]:
        subsets = sorted({subset_of[p] for p in paths if p in subset_of})
        if len(subsets) > 1:
            raise DataError(
                f"split '{split_file}' puts the identical files {', '.join(paths)} in {' and '.join(subsets)}: "
                "delete the copy in the wrong class folder, or drop --split to make a new split."
            )
        print(f"label conflict: identical files {', '.join(paths)} (all in {', '.join(subsets) or 'no subset'}): "
              "delete the copy in the wrong class folder", file=sys.stderr)
    for paths in report["cross_class_near_duplicates"]:
        print(f"near-duplicate pictures in two classes: {' ~ '.join(paths)} (check their labels)", file=sys.stderr)
    return classes, rows, report


def _arrays(rows, classes, data_dir, subset):
    chosen = [r for r in rows if r["subset"] == subset]
    files = [os.path.join(data_dir, *r["path"].split("/")) for r in chosen]
    return files, [classes.index(r["label"]) for r in chosen]


def _set_backbone_trainable(model, trainable):
    """Freeze (or unfreeze) every layer but the head layers of the model's registry entry (ModelInfo.head_layers:
    the classifier and, on ECA-ConvNeXt, the ECA layers the pretrained backbone lacks), which always train."""
    head = set(model_info(model.name).head_layers)
    for layer in model.layers:
        if layer.name not in head:
            layer.trainable = trainable


def _schedule(config, steps_per_epoch, epochs):
    """Adam's learning rate over `epochs` epochs: optional linear warm-up from lr/10, then cosine decay to 0."""
    steps = max(1, steps_per_epoch * epochs)
    warmup = min(steps - 1, steps_per_epoch * config.warmup_epochs)
    lr = config.lr
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10 if warmup else lr, decay_steps=steps - warmup, alpha=0.0,
        warmup_target=lr if warmup else None, warmup_steps=warmup,
    )


def _compile(model, config, steps_per_epoch, epochs, optimizer=None, weighted=False):
    """Compile for one phase of `epochs` epochs. `optimizer`: a restored one (resume) whose iterations and moments
    are kept; it gets the schedule of this config, so a run extended by --epochs decays over the new total and
    a changed --lr or --warmup-epochs takes effect, instead of the checkpoint's old schedule running on.
    `weighted`: accuracy honours sample weights (a multi-worker run's padded validation batches weigh 0)."""
    schedule = _schedule(config, steps_per_epoch, epochs)
    if optimizer is None:
        ema = config.ema
        optimizer = keras.optimizers.Adam(learning_rate=schedule, use_ema=bool(ema), ema_momentum=ema or 0.99)
    else:
        getattr(optimizer, "inner_optimizer", optimizer).learning_rate = schedule  # LossScaleOptimizer wraps it
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=None if weighted else ["accuracy"], weighted_metrics=["accuracy"] if weighted else None,
    )


def _enable_determinism(seed):
    """TensorFlow op determinism and every seed set: same seed and data -> same history.csv (slower on GPUs)."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _check_run_dir(run, resume):
    if resume and not os.path.exists(run.config_file):
        raise ConfigError(f"cannot resume: '{run.config_file}' does not exist. Start the run without --resume.")
    if not resume and os.path.exists(run.config_file):
        raise ConfigError(f"run directory '{run.path}' already holds a run: pass --resume to continue it, or a new --out.")


@contextlib.contextmanager
def mixed_precision(name):
    """Keras' global dtype policy `mixed_<name>` inside the block ("off": unchanged); the caller's comes back."""
    policy = keras.mixed_precision.global_policy()
    if name != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{name}")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


def train(config, resume=False):
    """Train (or resume) the run described by `config` (a TrainConfig); returns the run directory."""
    run = rundir.Run(config.out, required=None)  # written here, read by every later tool
    run_path = run.path
    check_writable(run_path)  # a read-only --out stops here, before any work
    _check_run_dir(run, resume)
    if config.deterministic:
        _enable_determinism(config.seed)
    split_cpu(config.cpu_devices)
    strategy = make_strategy(config.strategy)
    # Only the chief (worker 0 of a multi-worker job) writes the run directory; the other workers read it (to
    # resume) and write their identical files into a scratch folder, removed at the end.
    chief, workers = getattr(strategy, "chief", True), getattr(strategy, "job", None)
    out = run if chief else rundir.Run(tempfile.mkdtemp(prefix="mineralnet-worker-"), required=None)
    local = strategy.local_batches if workers else lambda dataset, batch: dataset  # each worker's part of a batch
    if workers and config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must split evenly over the "
                          f"{strategy.num_replicas_in_sync} replicas: pass a multiple of it.")
    data = config.data
    if config.demo and not data:
        data = make_demo_dataset(out.demo_data_dir, image_size=max(96, config.image_size))
    config = config.replace(out=run_path, data=os.path.abspath(data),
                            init_from=config.init_from and os.path.abspath(config.init_from))
    if resume:
        classes = read_json(run.labels_file)
        rows = read_split(run.split_file, config.data)
    else:
        classes, rows, report = _prepare_data(config)
        config, advice = resolve_auto(config, len(rows), len(classes))  # --model auto: a name before config.json
        if advice:
            print(advice)
    num_classes, size, batch = len(classes), config.image_size, config.batch_size
    state = read_state(run) if resume else None
    with mixed_precision(config.mixed_precision):
        # The model comes before any file is written: missing ImageNet weights (no internet) stop the run clean.
        with strategy.scope():
            if state:
                register_all()  # the Keras classes (ECA, ...) the checkpoint holds
                if workers:  # the layers' first values, overwritten by the checkpoint's, must agree across workers
                    keras.utils.set_random_seed(config.seed)
                model = keras.models.load_model(run.checkpoint_file(state["checkpoint"]))
            else:
                keras.utils.set_random_seed(config.seed)
                model = _build(config, num_classes)
                if config.init_from:
                    init_weights(model, config, classes)
        if not resume:
            out.write_split(rows)
            out.write_labels(classes)
            out.write_data_report(report)
            for skipped in report["skipped"]:
                print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
        out.write_config(config)  # on resume: what the run now really uses

        train_files, train_labels = _arrays(rows, classes, config.data, "train")
        val_files, val_labels = _arrays(rows, classes, config.data, "val")
        decoded = functools.lru_cache(lambda train_size: DecodedImages(train_files, train_size))  # one per size

        def train_data(train_size, first, last):
            dataset = make_dataset(train_files, train_labels, num_classes, train_size, batch, True, config.augment,
                                   config.seed, mixup=config.mixup, cutmix=config.cutmix, epochs=(first, last),
                                   images=decoded(train_size), drop_remainder=bool(workers))
            return local(dataset, batch)

        if workers:  # every training step and validation batch split evenly over the workers
            val_data, val_padding = even_batches(
                lambda files, labels: make_dataset(files, labels, num_classes, size, batch), val_files, val_labels,
                batch)
            val_data = local(val_data, batch)
        else:
            val_data, val_padding = make_dataset(val_files, val_labels, num_classes, size, batch), 1.0
        weights = class_weights(train_labels, num_classes) if config.class_weights else None
        if config.init_from:
            start_weights = f"the weights of {config.init_from}"
        elif config.weights == "none":
            start_weights = ("random initialisation (training from scratch: on small data expect far lower accuracy "
                             "than with ImageNet weights)")
        else:
            start_weights = f"backbone weights {config.weights}"
        print(f"{type(strategy).__name__.lstrip('_')} with {strategy.num_replicas_in_sync} replica(s)"
              f"{f' (worker {workers.process_id} of {workers.count})' if workers else ''}; "
              f"{len(train_files)} training, {len(val_files)} validation images of {num_classes} classes; "
              f"{config.model} from {start_weights}")
        steps = steps_per_epoch(len(train_files), batch, drop_remainder=bool(workers))
        if not steps:  # a multi-worker run trains on full global batches only
            raise ConfigError(f"{len(train_files)} training images make no full --batch-size {batch} batch for the "
                              "workers: pass a smaller --batch-size.")
        with disk_full_as_one_line(out):
            _fit(config, out, model, state, strategy, (train_data, val_data), steps, weights, val_padding)
        if workers:
            print(f"worker {workers.process_id} of {workers.count}: weights sha256 {weights_digest(model)}",
                  flush=True)
            strategy.finish()
            if not chief:
                shutil.rmtree(out.path, ignore_errors=True)
                return run_path
    _announce_no_lead(run, config, classes, train_labels, val_labels)
    if config.evaluate:
        from mineralnet.evaluate import evaluate_run

        evaluate_run(run, subset="test", tta=config.tta)
    return run_path


def _announce_no_lead(run, config, classes, train_labels, val_labels):
    """One warning at the end of training when no epoch's val accuracy beat the majority share (the share of val
    images of the most frequent training class): model.keras is then the first such epoch's, a model that learned
    nothing usable, which would otherwise pass on to evaluation and export without a word."""
    state = read_state(run)
    if not state or not val_labels:
        return
    counts = [train_labels.count(c) for c in range(len(classes))]
    majority = counts.index(max(counts))  # ties: label order, as mineralnet.baseline.majority_baseline
    share = val_labels.count(majority) / len(val_labels)
    if state["best_val_accuracy"] <= share + 1e-9:
        print(f"warning: model.keras is from epoch {state['best_epoch']}, and no epoch's val accuracy beat the "
              f"majority share: best {state['best_val_accuracy']:.4f}, while {share:.4f} of the {len(val_labels)} "
              f"val images are '{classes[majority]}', the most frequent training class. The model has learned "
              f"nothing usable. {weak_model_advice((config.model,), config.weights)}", file=sys.stderr, flush=True)


def stages(config):
    """(first epoch, end epoch, training image size) of each progressive-resizing stage: the epochs split evenly
    over the sizes of `progressive_sizes`, then `image_size` (one stage without progressive resizing)."""
    sizes = [*config.progressive_sizes, config.image_size]
    total = config.epochs
    bounds = [round(total * i / len(sizes)) for i in range(len(sizes) + 1)]
    return [(bounds[i], bounds[i + 1], size) for i, size in enumerate(sizes) if bounds[i] < bounds[i + 1]]


def _build(config, num_classes):
    """The registry model; with progressive resizing it takes any image size (validation and model.keras stay
    at `image_size`)."""
    side = None if config.progressive_sizes else config.image_size
    return build_model(config.model, num_classes, (side, side, 3), config.backbone_weights, dropout=config.dropout)


def init_weights(model, config, classes):
    """Load the weights of config.init_from (an earlier run's model.keras) into the freshly built `model`.

    The source must be the same model with the same classes in the same order and the same input size: its run's
    config.json and labels.json (when beside the file) are checked first, then every weight's shape, so a
    mismatch stops with one line instead of training from a half-loaded model."""
    path = config.init_from
    if not os.path.isfile(path):
        raise ConfigError(f"--init-from '{path}' does not exist: pass the model.keras of an earlier run.")
    source_run = rundir.Run(os.path.dirname(path), required=())  # its config and labels, when beside the file
    fix = "pass the same --model and --image-size as that run, or drop --init-from to train from scratch"
    source_config = source_run.train_config if source_run.config else None
    for key in ("model", "image_size"):
        if source_config and getattr(source_config, key) != getattr(config, key):
            raise ConfigError(f"--init-from '{path}' is a {key} {getattr(source_config, key)} run but this run has "
                              f"{key} {getattr(config, key)}: {fix}.")
    if source_run.labels and source_run.labels != list(classes):
        raise ConfigError(f"--init-from '{path}' was trained on the classes {source_run.labels} but --data has "
                          f"{list(classes)}: its output layer cannot be reused; drop --init-from to train from "
                          "scratch.")
    source = source_run.load_model(path)
    theirs, ours = [w.shape for w in source.weights], [w.shape for w in model.weights]
    if theirs != ours:
        raise ConfigError(f"--init-from '{path}' has other weights ({len(theirs)} tensors) than the {config.model} "
                          f"this run builds ({len(ours)} tensors, {model.output_shape[-1]} classes, input "
                          f"{model.input_shape[1:3]}): {fix}.")
    model.set_weights(source.get_weights())


def _fit(config, run, model, state, strategy, datasets, steps, weights, val_padding=1.0):
    """Run the frozen and full phases (and within them the progressive-resizing stages) that are not finished yet.
    `state`: the checkpoint state the model was restored from (None for a new run); `datasets`: ((image size,
    first epoch, end epoch) -> training dataset, validation dataset); `steps`: training batches per epoch;
    `val_padding`: padded / real validation images (distribute.even_batches)."""
    train_data, val_data = datasets
    size = config.image_size
    start = state["epoch"] if state else 0
    total, frozen = config.epochs, config.freeze_epochs
    if start >= total:
        print(f"run '{run.path}' already finished {start} of {total} epochs.")
    for phase, first, last in (("frozen", 0, frozen), ("full", frozen, total)):
        if start >= last or first == last:
            continue
        with strategy.scope():
            _set_backbone_trainable(model, phase == "full")
            # A checkpoint from inside this phase carries its optimizer (iterations, moments, EMA); a new phase
            # starts a fresh one.
            restored = model.optimizer if state and first < start else None
            _compile(model, config, steps, last - first, optimizer=restored, weighted=val_padding != 1.0)
        for stage_first, stage_end, train_size in stages(config):
            begin, end = max(start, first, stage_first), min(last, stage_end)
            if begin >= end:
                continue
            callback = RunCheckpoint(run, phase, total, state, image_size=size, train_size=train_size)
            extra = ema_callbacks(model) + [ValidationLossOfPadding(val_padding)]
            lines = progress_callbacks(total, steps)
            model.fit(train_data(train_size, begin, end), validation_data=val_data, epochs=end, initial_epoch=begin,
                      steps_per_epoch=steps, class_weight=weights, callbacks=extra + [callback] + lines,
                      shuffle=False, verbose=1 if sys.stdout.isatty() else 0)
            restore_raw_weights(extra)
            state = {"history": callback.history, "best_val_accuracy": callback.best,
                     "best_epoch": callback.best_epoch}
            start = end


def run_from_args(values, config_file=None, resume=False):
    """The CLI's entry: explicit flags (None = not given) over the config file over the defaults. A resumed run
    starts from its saved config.json instead of the defaults: flags that define the model or the data must match
    it (else ConfigError); the others (e.g. a larger --epochs) are applied and recorded."""
    from mineralnet.training.config import load_config_file

    file_values = load_config_file(config_file) if config_file else {}
    if resume and (values.get("init_from") or file_values.get("init_from")):
        raise ConfigError("--init-from starts a new run from another run's weights; --resume continues this run from "
                          "its own checkpoint: pass only one of them.")
    if not resume:
        config = resolve_config(file_values, values)
    else:
        run = rundir.Run(values.get("out") or file_values.get("out") or DEFAULT_OUT, required=None)
        _check_run_dir(run, resume=True)
        saved = run.train_config.to_dict()  # an older run's config.json: options added since at their defaults
        config = resolve_config({**saved, **file_values, "out": run.path}, values)
        state = read_state(run)
        for key, (old, new) in resume_changes(saved, config, state["epoch"] if state else 0).items():
            print(f"resume: {key} {old} -> {new}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return train(config, resume=resume)
