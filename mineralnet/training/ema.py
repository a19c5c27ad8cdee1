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


def ema_callbacks(model):
    """The callbacks that make validation see the averaged weights (none without EMA)."""
    return [keras.callbacks.SwapEMAWeights()] if _ema_optimizer(model) else []


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
