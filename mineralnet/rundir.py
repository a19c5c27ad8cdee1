"""The run directory: one folder holds everything a training run made, and every later tool reads it from here.

    RUN/config.json        resolved training config           RUN/model.keras      best model (val accuracy)
    RUN/labels.json        class names in label order         RUN/checkpoint/      resumable state
    RUN/split.csv          path,label,subset                  RUN/history.csv      one row per epoch
    RUN/data_report.json   images used, files skipped         RUN/curves.png       accuracy and loss curves
    RUN/eval/              report.json, report.md, confusion_matrix.png (test subset)

split.csv subsets: train (fit), val (best epoch), calib (conformal reject threshold only; absent in runs split
train:val:test and in runs made before it existed), test (final measures). Training reads only train and val.
"""

import os

from mineralnet.data.split import read_split
from mineralnet.errors import MineralnetError
from mineralnet.utils import read_json

CONFIG, LABELS, SPLIT, MODEL, DATA_REPORT = "config.json", "labels.json", "split.csv", "model.keras", "data_report.json"
HISTORY, CURVES, CHECKPOINT_DIR, EVAL_DIR = "history.csv", "curves.png", "checkpoint", "eval"


class RunError(MineralnetError):
    """A run directory that cannot be used; the message names the file and the fix."""


class Run:
    """Read access to a finished (or running) training run."""

    def __init__(self, path, required=(CONFIG, LABELS, SPLIT, MODEL)):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise RunError(f"run directory '{path}' does not exist: pass --run with the --out folder of a train.py run.")
        missing = [name for name in required if not os.path.exists(self.file(name))]
        if missing:
            raise RunError(
                f"run directory '{path}' is incomplete: {', '.join(missing)} missing. Finish (or --resume) its "
                "training first."
            )
        self.config = read_json(self.file(CONFIG)) if os.path.exists(self.file(CONFIG)) else {}
        self.labels = read_json(self.file(LABELS)) if os.path.exists(self.file(LABELS)) else []

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def image_size(self):
        return int(self.config["image_size"])

    def rows(self, subset=None, data_dir=None):
        """split.csv rows (with absolute `file`), optionally of one subset; the data dir defaults to the run's."""
        rows = read_split(self.file(SPLIT), data_dir or self.config.get("data"))
        return [r for r in rows if subset is None or r["subset"] == subset]

    def load_model(self, path=None):
        """The run's best model (or `path`), with mineralnet's layers registered."""
        from mineralnet.models.registry import register_all

        register_all()  # mineralnet's Keras classes (ECA, ...) for deserialisation; TensorFlow starts quietly
        import keras

        path = path or self.file(MODEL)
        try:
            return keras.models.load_model(path, compile=False)
        except Exception as error:
            raise RunError(f"model file '{path}' does not load ({type(error).__name__}: {error}): retrain or "
                           "pass another --model.") from error
