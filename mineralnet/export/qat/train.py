"""Fine-tune a tf_keras model (the quantization-aware or the pruned twin) on the run's training rows, with the
project's own tf.data pipeline and the run's augmentation (Mixup/CutMix included), label smoothing and batch
size, so the short fine-tune sees what training saw."""

import logging
import math

import tf_keras

from mineralnet.data.pipeline import AugmentConfig, class_weights, make_dataset

log = logging.getLogger("mineralnet.export")


def training_rows(run):
    rows = run.rows("train")
    return [row["file"] for row in rows], [run.labels.index(row["label"]) for row in rows]


def steps_per_epoch(run, config):
    return math.ceil(len(run.rows("train")) / int(config["batch_size"]))


def fine_tune(model, run, config, epochs, lr, what, callbacks=()):
    """Train `model` for `epochs` at learning rate `lr` (Adam, constant); returns the per-epoch loss and
    accuracy. `run` is the exporter's mineralnet.rundir.Run, `config` its config."""
    files, labels = training_rows(run)
    num_classes = len(run.labels)
    dataset = make_dataset(files, labels, num_classes, run.image_size, int(config["batch_size"]), training=True,
                           augment=AugmentConfig.from_dict(config.get("augment")), seed=int(config.get("seed", 0)),
                           mixup=float(config.get("mixup", 0.0)), cutmix=float(config.get("cutmix", 0.0)))
    model.compile(
        optimizer=tf_keras.optimizers.Adam(lr),
        loss=tf_keras.losses.CategoricalCrossentropy(label_smoothing=float(config.get("label_smoothing", 0.0))),
        metrics=["accuracy"],
    )
    progress = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log.info(
        "%s epoch %d/%d: loss %.4f, accuracy %.4f", what, epoch + 1, epochs, logs["loss"], logs["accuracy"]))
    weights = class_weights(labels, num_classes) if config.get("class_weights") else None
    history = model.fit(dataset, epochs=epochs, class_weight=weights, callbacks=[*callbacks, progress], verbose=0)
    return {"loss": [float(v) for v in history.history["loss"]],
            "accuracy": [float(v) for v in history.history["accuracy"]]}
