"""The export's preflight: its checks of a training run (a mineralnet.rundir.Run, which owns the run directory's
paths) and of the run's model, made before any slow work starts so bad input fails in seconds with one line
naming the file and the fix."""

import os

from mineralnet import rundir
from mineralnet.data import DataError, read_split
from mineralnet.data.split import check_content
from mineralnet.export.errors import ExportError


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_run(run):
    """Check `run` (a rundir.Run or its path) is a complete run whose split images all still exist and which has
    test rows; return the Run, which the whole export (and its QAT process) then reads."""
    try:
        run = rundir.Run.of(run)
    except (rundir.RunError, ValueError) as error:  # ValueError: a config or label file that is not JSON
        raise ExportError(_first_line(error)) from None
    config_path, labels_path, split_path = run.config_file, run.labels_file, run.split_file
    try:
        data_dir = str(run.train_config.data)
    except rundir.RunError as error:  # a config.json without data or image_size, or with values of other types
        raise ExportError(_first_line(error)) from None
    labels = run.labels
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise ExportError(f"label file '{labels_path}' must be a JSON list of at least two class names.")

    try:
        rows = read_split(split_path, data_dir, check_files=False)
    except DataError as error:
        raise ExportError(_first_line(error)) from None
    gone = [row["file"] for row in rows if not os.path.isfile(row["file"])]
    if gone:
        raise ExportError(
            f"{len(gone)} image(s) of split '{split_path}' no longer exist, e.g. '{gone[0]}': restore the dataset "
            f"at '{data_dir}' or set \"data\" in '{config_path}' to where it now lives."
        )
    try:
        check_content(rows, split_path)  # swapped class folders or edited photos: their labels would be wrong
    except DataError as error:
        raise ExportError(_first_line(error)) from None
    unknown = sorted({row["label"] for row in rows} - set(labels))
    if unknown:
        raise ExportError(f"split '{split_path}' has label(s) {', '.join(unknown)} missing from '{labels_path}'.")
    if not [row for row in rows if row["subset"] == "test"]:
        raise ExportError(f"split '{split_path}' has no test rows: the verification gate needs a test subset.")
    return run


def load_model(run):
    """The run's Keras model, checked against its labels and input size."""
    try:
        model = run.load_model()
    except rundir.RunError as error:  # its cause may be pages long (a corrupt zip, an unknown layer): keep a line
        reason = _first_line(error.__cause__ or error)
        raise ExportError(
            f"model file '{run.model_file}' does not load ({reason}): re-run training or restore model.keras."
        ) from None
    expected_input = (run.image_size, run.image_size, 3)
    if tuple(model.input_shape[1:]) != expected_input or model.output_shape[-1] != len(run.labels):
        raise ExportError(
            f"model file '{run.model_file}' takes {model.input_shape[1:]} and gives {model.output_shape[-1]} "
            f"classes but its run says {expected_input} and {len(run.labels)} labels: it belongs to another run."
        )
    return model
