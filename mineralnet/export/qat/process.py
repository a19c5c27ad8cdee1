"""The exporter's side of quantization-aware training and pruning: check they can run, start the tf_keras
child process (`python -m mineralnet.export.qat`), relay its progress and read back what it wrote.

tfmot 0.8.1 works only with tf_keras, and importing it sets TF_USE_LEGACY_KERAS=1 for the whole process, so it
never runs in the exporter's own process, which stays on Keras 3. The two exchange files in a folder inside the
export's staging directory: inputs.npz (calibration and test images) in; result.json and, per format, the
fine-tuned weights (weights_FORMAT.npz) out. The exporter puts those weights into a clone of the Keras 3 model and
converts it itself, with the rewrites and conversion of every other format (so each file is one XNNPACK partition,
and a free batch works as for the others).
"""

import importlib.util
import logging
import os
import subprocess
import sys
from collections import deque
from dataclasses import dataclass

import numpy as np

import mineralnet
from mineralnet.export.errors import ExportError
from mineralnet.export.options import PRUNED_FORMAT, QAT_FORMAT, QatOptions  # noqa: F401  (QatOptions re-exported)
from mineralnet.export.rewrite import rewrite_for_export
from mineralnet.models import registered_info, stem_layer
from mineralnet.utils import read_json

INPUTS, RESULT = "inputs.npz", "result.json"
MAX_TWIN_PROB_DIFF = 1e-4  # max abs probability difference allowed between the tf_keras twin and the Keras 3 model
LOG_PREFIX = "mineralnet.export.qat: "  # the child's progress lines; the parent relays them to its log
ERROR_PREFIX = "error: "
REQUIRED_MODULES = {"tf_keras": "tf_keras", "tensorflow_model_optimization": "tensorflow-model-optimization"}

log = logging.getLogger("mineralnet.export")


def weights_file(fmt):
    return f"weights_{fmt}.npz"


# How each of the child's formats is converted: int8_qat like int8 (GELU in its integer form); the pruned model
# like float32 (exact).
CONVERTED_AS = {QAT_FORMAT: QAT_FORMAT, PRUNED_FORMAT: "float32"}


def check_options(options, formats):
    """Fail fast, before any model is loaded, on bad values or a missing `qat` extra."""
    if not options.child_formats(formats):
        return
    if int(options.epochs) < 1:
        raise ExportError(f"--qat-epochs must be at least 1, got {options.epochs}.")
    if not float(options.lr) > 0:
        raise ExportError(f"--qat-lr must be a positive learning rate, got {options.lr}.")
    if options.prune_sparsity is not None and not 0 < float(options.prune_sparsity) < 1:
        raise ExportError(f"--prune-sparsity must be a fraction between 0 and 1 (e.g. 0.5), got "
                          f"{options.prune_sparsity}.")
    missing = [package for module, package in REQUIRED_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:  # find_spec, not import: importing tfmot would switch this process to tf_keras
        raise ExportError(f"int8_qat and --prune-sparsity need {' and '.join(missing)}: pip install "
                          "'mineralnet[qat]' (or leave them out).")


def require_convnext(model, model_path):
    """The tf_keras twin knows the ConvNeXt architecture only: a registry model (found by the model's name) whose
    ModelInfo says the twin rebuilds it (qat_twin), and its stem in the file (not another model under its name)."""
    info = registered_info(model)
    if info is None or not info.qat_twin or stem_layer(model) is None:
        raise ExportError(
            f"int8_qat and --prune-sparsity support the ConvNeXt models (eca_convnext_tiny, convnext_tiny) only, "
            f"and '{model_path}' is '{model.name}': leave them out (int8 works for any model)."
        )


@dataclass
class ChildOutput:
    result: dict  # result.json of the child
    weights: dict  # format -> (fine-tuned weights {layer name: arrays in the Keras 3 layout}, their probabilities)

    def model(self, fmt, model, test_images, **options):
        """(clone of `model` (Keras 3) holding the weights the child made for `fmt`, rewritten with the
        rewrite_for_export `options`, {rewritten layer type: count}), checked to compute on the first test
        images what the tf_keras process computed with those weights, so no weight went astray on the way back."""
        weights, expected = self.weights[fmt]
        clone, rewrites = rewrite_for_export(model, weights=weights, **options)
        images = test_images[:len(expected)].astype(np.float32)
        difference = float(np.max(np.abs(clone.predict(images, batch_size=32, verbose=0) - expected)))
        if difference > MAX_TWIN_PROB_DIFF:
            raise ExportError(f"the {fmt} weights give probabilities up to {difference:.2e} away from the tf_keras "
                              f"model's (allowed {MAX_TWIN_PROB_DIFF:.0e}): fix mineralnet/export/qat/twin.py.")
        return clone, rewrites


def save_weights(path, weights, probabilities):
    """weights_FORMAT.npz: every array as 'LAYER:INDEX', the probabilities as 'probabilities'."""
    arrays = {f"{name}:{index}": value for name, values in weights.items() for index, value in enumerate(values)}
    np.savez(path, probabilities=probabilities, **arrays)


def load_weights(path):
    """(weights {layer name: [arrays]}, probabilities) of a save_weights file."""
    with np.load(path) as data:
        weights = {}
        for key in sorted((k for k in data.files if k != "probabilities"), key=lambda k: int(k.rpartition(":")[2])):
            weights.setdefault(key.rpartition(":")[0], []).append(data[key])
        return weights, data["probabilities"]


def _child_command(plan, work_dir):
    options = plan.qat
    command = [sys.executable, "-m", "mineralnet.export.qat", "--run", plan.run.path, "--work", work_dir,
               "--sha256", plan.source_sha256, "--epochs", str(int(options.epochs)), "--lr", repr(float(options.lr))]
    if QAT_FORMAT in plan.formats:
        command.append("--qat")
    if options.prune_sparsity:
        command += ["--prune-sparsity", repr(float(options.prune_sparsity))]
    return command


def run_child(plan, work_dir):
    """Run the QAT/pruning child for `plan` (an ExportPlan) in `work_dir`; return its ChildOutput or raise
    ExportError with the child's own error line."""
    os.makedirs(work_dir)
    np.savez(os.path.join(work_dir, INPUTS), calibration=plan.calibration_images, test=plan.test_images)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(mineralnet.__file__)))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1",
               PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    log.info("starting the tf_keras process for %s", ", ".join(plan.qat.child_formats(plan.formats)))
    tail, error = deque(maxlen=15), None
    process = subprocess.Popen(_child_command(plan, work_dir), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        for line in process.stderr:
            line = line.rstrip("\n")
            if line.startswith(LOG_PREFIX):
                log.info("%s", line[len(LOG_PREFIX):])
            elif line.startswith(ERROR_PREFIX):
                error = line[len(ERROR_PREFIX):]
            elif line.strip():
                tail.append(line)
        status = process.wait()
    finally:
        if process.poll() is None:  # interrupted: do not leave a training process behind
            process.kill()
            process.wait()
    if status != 0:
        raise ExportError(error or (
            f"the QAT process (python -m mineralnet.export.qat) failed with exit status {status}; its last output: "
            + " | ".join(tail)))
    return ChildOutput(read_json(os.path.join(work_dir, RESULT)),
                       {fmt: load_weights(os.path.join(work_dir, weights_file(fmt)))
                        for fmt in plan.qat.child_formats(plan.formats)})
