"""Progress lines when stdout is not a terminal (nohup, a log file, CI): Keras' progress bar is off there, and a
first epoch of a quarter of an hour would otherwise print nothing until it ends."""

import sys
import time

import keras

LINES_PER_EPOCH = 10  # about this many lines per epoch, never more than one per step


class ProgressLines(keras.callbacks.Callback):
    """One `epoch E/T step S/N loss L acc A (elapsed s)` line about every tenth of an epoch."""

    def __init__(self, total_epochs, steps_per_epoch, stream=None):
        super().__init__()
        self.total_epochs, self.steps = total_epochs, steps_per_epoch
        self.every = max(1, steps_per_epoch // LINES_PER_EPOCH)
        self.stream = stream or sys.stdout

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started = epoch + 1, time.time()

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if step % self.every and step != self.steps:
            return
        logs = logs or {}
        print(f"epoch {self.epoch}/{self.total_epochs} step {step}/{self.steps} "
              f"loss {logs.get('loss', float('nan')):.4f} acc {logs.get('accuracy', float('nan')):.4f} "
              f"({time.time() - self.started:.0f} s)",
              file=self.stream, flush=True)


def progress_callbacks(total_epochs, steps_per_epoch):
    """[ProgressLines] when stdout is not a terminal (Keras' own bar is shown on one), else []."""
    return [] if sys.stdout.isatty() else [ProgressLines(total_epochs, steps_per_epoch)]
