"""The run directory: one folder holds everything a training run made, and every later tool reads it from here.

    RUN/config.json        resolved training config           RUN/model.keras      best model (val accuracy)
    RUN/labels.json        class names in label order         RUN/checkpoint/      epoch-N.keras, state.json
    RUN/split.csv          path,label,sha256,subset           RUN/history.csv      one row per epoch
    RUN/data_report.json   images used, files skipped         RUN/curves.png       accuracy and loss curves
    RUN/eval/              report.json, report.md, confusion_matrix.png, grade_recovery.png (test subset;
                           eval_<subset>/ for others)
    RUN/export/            model_<format>.tflite + .json sidecars, labels.txt, report.json/.md (export.py)
    RUN/demo_data/         the synthetic dataset of a --demo run without --data

split.csv subsets: train (fit), val (best epoch), calib (conformal reject threshold only; absent in runs split
train:val:test and in runs made before it existed), test (final measures). Training reads only train and val.

`Run` owns these paths, for writing (training) and reading (evaluation, Grad-CAM, export, conformal calibration):
no other module spells a file name of the run directory; evaluation and export take their files' names from here
(REPORT, tflite_name, ...) also when they write to an --out folder elsewhere. A tool is handed one Run (or opens
one from its --run path) and passes that same object on.
"""

import os

from mineralnet.errors import MineralnetError
from mineralnet.utils import read_json, write_json

CONFIG, LABELS, SPLIT, MODEL, DATA_REPORT = "config.json", "labels.json", "split.csv", "model.keras", "data_report.json"
HISTORY, CURVES, CHECKPOINT_DIR, EVAL_DIR = "history.csv", "curves.png", "checkpoint", "eval"
STATE, EXPORT_DIR, DEMO_DATA = "state.json", "export", "demo_data"
# The files of an evaluation folder (RUN/eval, or evaluate.py --out) and of an export folder (RUN/export, or
# export.py --out): both hold REPORT and REPORT_MARKDOWN; an export's models are tflite_name(format), each with its
# sidecar_name(format), and EXPORT_LABELS.
REPORT, REPORT_MARKDOWN, CONFUSION_MATRIX = "report.json", "report.md", "confusion_matrix.png"
GRADE_RECOVERY = "grade_recovery.png"  # an evaluation's grade-recovery curves, one per class as the target bin
EXPORT_LABELS = "labels.txt"
FINISHED = (CONFIG, LABELS, SPLIT, MODEL)  # what evaluation, Grad-CAM and export need
SAVED_OPTIONS = ("data", "image_size")  # in every config.json: where the split's paths lie, the model's input size


def tflite_name(fmt):
    """The exported model file of format `fmt` (float32, int8, ...)."""
    return f"model_{fmt}.tflite"


def sidecar_name(fmt):
    """The JSON sidecar beside tflite_name(fmt)."""
    return f"model_{fmt}.json"


class RunError(MineralnetError):
    """A run directory that cannot be used; the message names the file and the fix."""


class Run:
    """Every path of one run directory, its options, labels and split rows.

    required: the files that must exist (else RunError naming them and the fix), None for a run being written
    (training), whose folder need not exist yet. config.json and labels are read once here ({} and [] while absent)
    and kept up to date by write_config / write_labels. The run's options are read typed, as `train_config`.
    """

    def __init__(self, path, required=FINISHED):
        self.path = os.path.abspath(path)
        self._rows = {}  # data dir -> split.csv rows
        self._train_config = None  # made from self.config on first use
        if required is not None:
            self.require(required, shown=path)
        # config.json as written: the options of train_config, and an ensemble's members besides (mineralnet.ensemble)
        self.config = read_json(self.config_file) if os.path.exists(self.config_file) else {}
        self.labels = read_json(self.labels_file) if os.path.exists(self.labels_file) else []

    @classmethod
    def of(cls, run, required=FINISHED):
        """`run` itself if it is a Run (checked for `required`), else the Run opened at that path."""
        if isinstance(run, Run):
            if required is not None:
                run.require(required)
            return run
        return cls(run, required)

    def require(self, names, shown=None):
        """RunError unless the folder exists and holds every file in `names`."""
        shown = shown or self.path
        if not os.path.isdir(self.path):
            raise RunError(f"run directory '{shown}' does not exist: pass --run with the --out folder of a train.py run.")
        missing = [name for name in names if not os.path.exists(self.file(name))]
        if missing:
            raise RunError(
                f"run directory '{shown}' is incomplete: {', '.join(missing)} missing. Finish (or --resume) its "
                "training first."
            )

    def file(self, name):
        return os.path.join(self.path, name)

    # Paths.
    config_file = property(lambda self: self.file(CONFIG))
    labels_file = property(lambda self: self.file(LABELS))
    split_file = property(lambda self: self.file(SPLIT))
    model_file = property(lambda self: self.file(MODEL))
    data_report_file = property(lambda self: self.file(DATA_REPORT))
    history_file = property(lambda self: self.file(HISTORY))
    curves_file = property(lambda self: self.file(CURVES))
    checkpoint_dir = property(lambda self: self.file(CHECKPOINT_DIR))
    state_file = property(lambda self: os.path.join(self.checkpoint_dir, STATE))
    export_dir = property(lambda self: self.file(EXPORT_DIR))
    demo_data_dir = property(lambda self: self.file(DEMO_DATA))

    def checkpoint_file(self, name):
        return os.path.join(self.checkpoint_dir, name)

    def eval_dir(self, subset="test"):
        """RUN/eval for the test subset, RUN/eval_<subset> for another."""
        return self.file(EVAL_DIR if subset == "test" else f"{EVAL_DIR}_{subset}")

    # Reading.
    @property
    def train_config(self):
        """The run's options, a mineralnet.training.TrainConfig read from config.json, whichever version wrote it
        (TrainConfig.from_saved: options added since take their defaults). RunError naming the file and the fix
        for a config.json without the two options every later tool needs, `data` and `image_size`."""
        if self._train_config is None:
            from mineralnet.training.config import ConfigError, TrainConfig

            missing = [key for key in SAVED_OPTIONS if not isinstance(self.config, dict) or key not in self.config]
            if missing:
                raise RunError(f"run config '{self.config_file}' lacks the option(s) {', '.join(missing)}: restore "
                               "it from the run (train.py writes it), or pass --run with a finished run.")
            try:
                self._train_config = TrainConfig.from_saved(self.config)
            except (ConfigError, TypeError, ValueError) as error:
                raise RunError(f"run config '{self.config_file}' does not read ({error}): restore it from the run.") \
                    from None
        return self._train_config

    @property
    def image_size(self):
        return self.train_config.image_size

    def rows(self, subset=None, data_dir=None):
        """split.csv rows (with absolute `file`), optionally of one subset; the data dir defaults to the run's.
        Read once per data dir."""
        from mineralnet.data.split import read_split

        data_dir = data_dir or self.train_config.data
        if data_dir not in self._rows:
            self._rows[data_dir] = read_split(self.split_file, data_dir)
        return [r for r in self._rows[data_dir] if subset is None or r["subset"] == subset]

    def load_model(self, path=None):
        """The run's best model (or `path`), with mineralnet's layers registered."""
        from mineralnet.models.registry import register_all

        register_all()  # mineralnet's Keras classes (ECA, ...) for deserialisation; TensorFlow starts quietly
        import keras

        path = path or self.model_file
        try:
            return keras.models.load_model(path, compile=False)
        except Exception as error:
            raise RunError(f"model file '{path}' does not load ({type(error).__name__}: {error}): retrain or "
                           "pass another --model.") from error

    # Writing (atomic, see mineralnet.utils).
    def write_config(self, config):
        """config.json: a TrainConfig (training), or the dict of an ensemble (its options and members)."""
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        write_json(self.config_file, values)
        self.config, self._train_config = values, None

    def write_labels(self, labels):
        write_json(self.labels_file, labels)
        self.labels = list(labels)

    def write_split(self, rows):
        from mineralnet.data.split import write_split

        write_split(rows, self.split_file)
        self._rows = {}

    def write_data_report(self, report):
        write_json(self.data_report_file, report)
