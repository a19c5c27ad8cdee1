"""Exponential moving average (Polyak averaging) of the weights, through Keras' own `use_ema` optimizers.

Validation runs on the averaged weights (Keras' SwapEMAWeights swaps them in around every evaluation), the
best-model file holds them, and the resumable checkpoint keeps the raw weights with the average in the
optimizer, so a resumed run continues exactly where it stopped.
"""

import contextlib

import keras


def _ema_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer under mixed_float16
    return optimizer if getattr(optimizer, "use_ema", False) else None


class RawWeightsKeeper(keras.callbacks.Callback):
    """Keras ends every fit() by overwriting the weights with their average. The next fit() with the same
    optimizer (the next progressive-resizing stage, or the full phase after a frozen one) must go on from the raw
    weights, as a resumed run does: this keeps them at every epoch end for `restore_raw_weights`."""

    def on_epoch_end(self, epoch, logs=None):
        self.raw = [variable.numpy() for variable in self.model.trainable_variables]


def ema_callbacks(model):
    """The callbacks of a fit() with EMA: validation on the averaged weights, raw weights kept (none without)."""
    return [keras.callbacks.SwapEMAWeights(), RawWeightsKeeper()] if _ema_optimizer(model) else []


def restore_raw_weights(callbacks):
    """After fit(): put back the raw weights that `ema_callbacks` kept (a no-op without EMA)."""
    for callback in callbacks:
        if isinstance(callback, RawWeightsKeeper) and hasattr(callback, "raw"):
            for variable, value in zip(callback.model.trainable_variables, callback.raw):
                variable.assign(value)


@contextlib.contextmanager
def averaged_weights(model):
    """Inside the block the model holds the averaged weights (unchanged without EMA); the raw ones come back
    after it."""
    optimizer = _ema_optimizer(model)
    if optimizer is None or not optimizer.built:
        yield model
        return
    pairs = list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))
    raw = [variable.numpy() for variable, _ in pairs]
    for variable, average in pairs:
        variable.assign(average)
    try:
        yield model
    finally:
        for (variable, _), value in zip(pairs, raw):
            variable.assign(value)
