"""The strategy of a run: one device, MirroredStrategy over one machine's devices, or several processes and hosts
(mineralnet.training.workers: Keras' distribution API on the JAX backend)."""

import keras

from mineralnet.training.config import ConfigError
from mineralnet.training.workers import ADDRESSES, job_from_env, start, use_jax_backend, wanted


def split_cpu(count):
    """Expose the CPU as `count` logical devices (must run before TensorFlow touches a device)."""
    if count > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def make_strategy(name):
    """auto: a job of several workers in KERAS_DISTRIBUTION_JOB_ADDRESSES -> multiworker, several GPUs ->
    mirrored, else the default strategy (train.py has checked the job and chosen the JAX backend for it:
    workers.use_jax_backend)."""
    if wanted(name):
        job = job_from_env()
        if job is None or keras.backend.backend() != "jax":
            use_jax_backend(name)  # the line that names the fix
            raise ConfigError(f"--strategy multiworker trains on Keras' JAX backend: start train.py with "
                              f"KERAS_BACKEND=jax (train.py sets it when {ADDRESSES} is set or the flag given).")
        return start(job)
    if keras.backend.backend() != "tensorflow":
        if name == "mirrored":
            raise ConfigError(f"--strategy mirrored is TensorFlow's: use KERAS_BACKEND=tensorflow, or "
                              f"--strategy multiworker with {ADDRESSES}.")
        return _Local()
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


class _Local:
    """One process on another backend than TensorFlow (KERAS_BACKEND=jax): Keras' default placement."""

    num_replicas_in_sync, chief = 1, True

    def scope(self):
        import contextlib

        return contextlib.nullcontext()


def even_batches(make, files, labels, batch):
    """Validation batches that split evenly over the workers: `make(files, labels)` over the files repeated up to
    a whole number of `batch`, each batch with a sample weight, 0 for the repeats (a multi-process step needs the
    same batch shape on every process). Returns (dataset, padded / real count) for ValidationLossOfPadding.
    Accuracy is exact (a weighted mean); Keras' loss divides by the batch size, so the loss needs that factor."""
    import tensorflow as tf

    count = len(files)
    total = -(-count // batch) * batch
    picks = [i % count for i in range(total)]
    dataset = make([files[i] for i in picks], [labels[i] for i in picks])
    weights = tf.data.Dataset.from_tensor_slices(tf.constant([1.0] * count + [0.0] * (total - count))).batch(batch)
    return tf.data.Dataset.zip((dataset, weights)).map(lambda xy, w: (xy[0], xy[1], w)), total / count


class ValidationLossOfPadding(keras.callbacks.Callback):
    """val_loss over the real validation images: Keras averages the weighted loss over every image of a batch,
    the zero-weighted repeats of even_batches included; this scales it back (before the checkpoint records it)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "val_loss" in logs and self.factor != 1.0:
            logs["val_loss"] = float(logs["val_loss"]) * self.factor


def weights_digest(model):
    """sha256 of this process's copy of every weight: equal on every worker when the replicas are identical
    (printed at the end of a multi-worker run; tests/test_multiworker.py compares them)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()
