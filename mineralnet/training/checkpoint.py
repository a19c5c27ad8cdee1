"""Per-epoch bookkeeping of a run: best model, resumable checkpoint, history.csv, curves.png, a summary line.

Each epoch writes `checkpoint/epoch-N.keras` (model + optimizer, so the learning-rate position survives), then
`checkpoint/state.json` naming it, then removes older checkpoints: a kill at any moment leaves a consistent
state.json whose checkpoint exists. Every file goes through a temp file + rename.
"""

import csv
import io
import os
import time

import keras

from mineralnet import rundir
from mineralnet.plots import plot_curves
from mineralnet.training.ema import averaged_weights
from mineralnet.utils import atomic_path, atomic_write_text, read_json, write_json

HISTORY_FIELDS = ["epoch", "phase", "image_size", "learning_rate", "loss", "accuracy", "val_loss", "val_accuracy",
                  "seconds"]


def read_state(run):
    """The last finished epoch's state of `run` (a rundir.Run or its path), or None for a run that has not finished
    an epoch."""
    path = rundir.Run.of(run, required=None).state_file
    return read_json(path) if os.path.exists(path) else None


def save_model(model, path, with_optimizer=True, image_size=None):
    """Save atomically; without the optimizer the file is a third of the size and loads without compile state.
    A model trained at several sizes (progressive resizing) is saved for `image_size`, the size it serves at."""
    if not with_optimizer and image_size and None in model.input_shape[1:3]:
        fixed = keras.models.clone_model(model, input_tensors=keras.Input((image_size, image_size, 3), name="image"))
        fixed.set_weights(model.get_weights())
        model = fixed
    elif not with_optimizer:
        # An uncompiled Functional over the same graph (same layers, same weights): no copy, no optimizer.
        # (keras.models.clone_model would re-compile the clone with the original's optimizer.)
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(path) as tmp:
        model.save(tmp)


def write_history(run, history, best_epoch=None):
    """history.csv, and curves.png with `best_epoch` (the one saved as model.keras) marked; `run`: a rundir.Run or
    its path."""
    run = rundir.Run.of(run, required=None)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run.history_file, buffer.getvalue())
    plot_curves(history, run.curves_file, best_epoch)


class RunCheckpoint(keras.callbacks.Callback):
    """Writes the run's files (`run`: a rundir.Run or its path) after every epoch and prints one summary line per
    epoch."""

    def __init__(self, run, phase, total_epochs, state=None, image_size=None, train_size=None):
        super().__init__()
        self.image_size, self.train_size = image_size, train_size
        self.run = rundir.Run.of(run, required=None)
        self.phase = phase
        self.total_epochs = total_epochs
        state = state or {}
        self.history = list(state.get("history", []))
        self.best = state.get("best_val_accuracy", -1.0)
        self.best_epoch = state.get("best_epoch")

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()
        # The rate of the epoch's first step: what the epoch trained at (the value after it is the next one's).
        self.learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        number = epoch + 1
        row = {"epoch": number, "phase": self.phase, "image_size": self.train_size,
               "seconds": round(time.time() - self.started, 2), "learning_rate": self.learning_rate}
        row.update({k: float(logs[k]) for k in HISTORY_FIELDS if k in logs})
        self.history = [r for r in self.history if r["epoch"] < number] + [row]
        improved = row.get("val_accuracy", -1.0) > self.best
        if improved:
            self.best, self.best_epoch = row["val_accuracy"], number
            with averaged_weights(self.model):  # the weights that were just validated
                save_model(self.model, self.run.model_file, False, self.image_size)
        folder = self.run.checkpoint_dir
        name = f"epoch-{number}.keras"
        save_model(self.model, self.run.checkpoint_file(name))
        write_json(self.run.state_file, {
            "epoch": number, "phase": self.phase, "checkpoint": name, "best_val_accuracy": self.best,
            "best_epoch": self.best_epoch, "history": self.history,
        })
        for old in os.listdir(folder):
            if old.endswith(".keras") and old != name:
                os.remove(self.run.checkpoint_file(old))
        write_history(self.run, self.history, self.best_epoch)
        print(
            f"epoch {number}/{self.total_epochs} [{self.phase}] loss {row.get('loss', float('nan')):.4f} "
            f"acc {row.get('accuracy', float('nan')):.4f} val_loss {row.get('val_loss', float('nan')):.4f} "
            f"val_acc {row.get('val_accuracy', float('nan')):.4f} lr {row['learning_rate']:.2e} "
            f"{row['seconds']:.1f}s{'  * best, saved model.keras' if improved else ''}",
            flush=True,
        )
