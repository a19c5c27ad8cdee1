"""Fine-tune a tf_keras model (the quantization-aware or the pruned twin) on the run's training rows, with the
project's own tf.data pipeline and the run's augmentation (Mixup/CutMix included), label smoothing and batch
size, so the short fine-tune sees what training saw."""

import logging
import math

import tf_keras

from mineralnet.data.pipeline import class_weights, make_dataset

log = logging.getLogger("mineralnet.export")


def training_rows(run):
    rows = run.rows("train")
    return [row["file"] for row in rows], [run.labels.index(row["label"]) for row in rows]


def steps_per_epoch(run):
    return math.ceil(len(run.rows("train")) / run.train_config.batch_size)


def fine_tune(model, run, epochs, lr, what, callbacks=()):
    """Train `model` for `epochs` at learning rate `lr` (Adam, constant); returns the per-epoch loss and
    accuracy. `run` is the exporter's mineralnet.rundir.Run, whose train_config gives the rest."""
    config = run.train_config
    files, labels = training_rows(run)
    num_classes = len(run.labels)
    dataset = make_dataset(files, labels, num_classes, run.image_size, config.batch_size, training=True,
                           augment=config.augment, seed=config.seed, mixup=config.mixup, cutmix=config.cutmix)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(lr),
        loss=tf_keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    progress = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log.info(
        "%s epoch %d/%d: loss %.4f, accuracy %.4f", what, epoch + 1, epochs, logs["loss"], logs["accuracy"]))
    weights = class_weights(labels, num_classes) if config.class_weights else None
    history = model.fit(dataset, epochs=epochs, class_weight=weights, callbacks=[*callbacks, progress], verbose=0)
    return {"loss": [float(v) for v in history.history["loss"]],
            "accuracy": [float(v) for v in history.history["accuracy"]]}
