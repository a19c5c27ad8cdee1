"""The exported .tflite model and its sidecar JSON, checked against each other before the runner starts.

The sidecar is the only place the labels, the input quantisation and the calibrated reject threshold(s) live, so a
sidecar from another export would sort every item into the wrong bin without any error. The runner therefore
refuses to start unless the model's sha256, output size and input tensor agree with the sidecar.
"""

import hashlib
import json
import math
import os
import time

import numpy as np

from edge.decision import MONDRIAN_CONFORMAL, SPLIT_CONFORMAL
from edge.drift import reference_problem
from edge.preprocess import DECODE_METHOD, RESIZE_METHOD, dequantize, quantize, resize_rgb

_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8}
_REJECT_METHODS = (SPLIT_CONFORMAL, MONDRIAN_CONFORMAL)  # what edge/decision.py's Decider implements


class ModelError(ValueError):
    """The model or its sidecar cannot be used; the message is one line naming the file and the fix."""


def interpreter_class():
    """LiteRT's interpreter, or tflite_runtime's on devices that only have that wheel."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ModelError(
                "no TFLite interpreter is installed: pip install ai-edge-litert (or tflite-runtime where no "
                "ai-edge-litert wheel exists for the device)."
            ) from None
    return Interpreter


def default_sidecar_path(model_path):
    return os.path.splitext(model_path)[0] + ".json"


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(path):
    """The sidecar dict, with the keys the runner relies on checked for presence and type."""
    try:
        with open(path) as handle:
            sidecar = json.load(handle)
    except FileNotFoundError:
        raise ModelError(
            f"sidecar '{path}' not found: export the model with its sidecar (python -m mineralnet.export) or pass "
            "--sidecar."
        ) from None
    except (OSError, ValueError) as error:
        raise ModelError(f"sidecar '{path}' is not readable JSON ({error}): re-export the model.") from None
    problem = _sidecar_problem(sidecar)
    if problem:
        raise ModelError(f"sidecar '{path}' {problem}: re-export the model to get a valid sidecar.")
    problem = _reject_problem(sidecar.get("reject"), sidecar["labels"])
    if problem:
        raise ModelError(
            f"sidecar '{path}' has a 'reject' {problem}: re-run python -m mineralnet.conformal on this model."
        )
    problem = reference_problem(sidecar.get("reference"), sidecar["labels"])
    if problem:
        raise ModelError(
            f"sidecar '{path}' has a drift 'reference' {problem}: re-run python -m mineralnet.conformal on this model."
        )
    return sidecar


def _sidecar_problem(sidecar):
    if not isinstance(sidecar, dict):
        return "is not a JSON object"
    for key in ("labels", "input", "output", "sha256"):
        if key not in sidecar:
            return f"has no '{key}'"
    labels = sidecar["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
        return "has 'labels' that are not a list of class names"
    if len(set(labels)) != len(labels):
        return "lists a label twice"
    for key in ("input", "output"):
        tensor = sidecar[key]
        if (
            not isinstance(tensor, dict)
            or tensor.get("dtype") not in _DTYPES
            or not isinstance(tensor.get("shape"), list)
        ):
            return f"has an '{key}' without a shape and a dtype of {', '.join(_DTYPES)}"
        if not isinstance(tensor.get("scale", 0.0), (int, float)) or not isinstance(tensor.get("zero_point", 0), int):
            return f"has an '{key}' whose scale or zero_point is not a number"
        if tensor["dtype"] != "float32" and not tensor.get("scale", 0.0) > 0:
            return f"has a quantised '{key}' ({tensor['dtype']}) without a scale > 0"
    shape = sidecar["input"]["shape"]
    if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
        return f"has input shape {shape}, not [1, S, S, 3]"
    preprocessing = sidecar.get("preprocessing", {})
    expected = {"pixels": "raw RGB 0-255", "color": "RGB", "input_size": shape[1], "resize_method": RESIZE_METHOD,
                "decode": DECODE_METHOD}
    for key, value in expected.items():
        if key in preprocessing and preprocessing[key] != value:
            # A different contract would need a different edge/preprocess.py: refuse rather than mis-sort.
            return f"asks for preprocessing {key}={preprocessing[key]!r}, but this runner does {value!r}"
    return None


def _is_qhat(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


def _reject_problem(reject, labels):
    """What is wrong with the calibrated reject block (None if absent or fine): a bad one would mis-sort silently."""
    if reject is None:
        return None
    if not isinstance(reject, dict) or reject.get("method") not in _REJECT_METHODS:
        return f"whose method is not one of {', '.join(_REJECT_METHODS)}"
    if reject["method"] == SPLIT_CONFORMAL:
        if not _is_qhat(reject.get("qhat")):
            return "whose qhat is not a number between 0 and 1"
    else:
        per_class = reject.get("qhat_per_class")
        if not isinstance(per_class, dict) or set(per_class) != set(labels):
            return "whose qhat_per_class does not name exactly the sidecar's labels"
        bad = [label for label in labels if not _is_qhat(per_class[label])]
        if bad:
            return f"whose qhat_per_class['{bad[0]}'] is not a number between 0 and 1"
    return _grade_targets_problem(reject.get("grade_targets"), labels)


def _grade_targets_problem(targets, labels):
    """What is wrong with the reject block's grade rules (mineralnet.conformal --target-grade), None if fine."""
    if targets is None:
        return None
    if not isinstance(targets, dict):
        return "whose grade_targets is not an object of class: rule"
    for label, rule in targets.items():
        if label not in labels:
            return f"whose grade_targets names '{label}', not one of the sidecar's labels"
        if not isinstance(rule, dict) or not _is_qhat(rule.get("threshold")) or not all(
                _is_qhat(rule.get(key)) and 0 < rule[key] < 1 for key in ("target", "delta")):
            return (f"whose grade_targets['{label}'] lacks a threshold between 0 and 1 or a target and delta "
                    "strictly between 0 and 1")
    return None


class Model:
    """A TFLite classifier: `classify(pixels)` gives class probabilities, in the sidecar's label order;
    `classify_batch` those of N inputs, in one interpreter call when the file's batch dimension is free
    (`python -m mineralnet.export --batch dynamic`), else one call each."""

    def __init__(self, model_path, sidecar_path=None, threads=None):
        self.path = model_path
        self.threads = threads  # the interpreter's threads (None: its choice), for the contact line too
        self.sidecar_path = sidecar_path or default_sidecar_path(model_path)
        if not os.path.isfile(model_path):
            raise ModelError(f"model '{model_path}' not found: pass --model with an exported .tflite file.")
        sidecar = read_sidecar(self.sidecar_path)
        self.sha256 = file_sha256(model_path)
        if self.sha256 != sidecar["sha256"]:
            raise ModelError(
                f"model '{model_path}' has sha256 {self.sha256[:12]}... but sidecar '{self.sidecar_path}' was written "
                f"for {str(sidecar['sha256'])[:12]}...: pass the --sidecar exported with this model, or re-export."
            )
        self.labels = sidecar["labels"]
        self.reject = sidecar.get("reject")
        self.reference = sidecar.get("reference")  # the calib rows' prediction histograms, for edge/drift.py
        try:
            self._interpreter = interpreter_class()(model_path=model_path, num_threads=threads)
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"model '{model_path}' cannot be loaded by the TFLite interpreter ({error}).") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._check_tensor("input", self._input, sidecar["input"])
        self._check_tensor("output", self._output, sidecar["output"])
        if int(self._output["shape"][-1]) != len(self.labels):
            raise ModelError(
                f"model '{model_path}' outputs {int(self._output['shape'][-1])} classes but sidecar "
                f"'{self.sidecar_path}' lists {len(self.labels)} labels: pass the --sidecar exported with this model."
            )
        self.input_size = int(self._input["shape"][1])
        self.input_dtype = self._input["dtype"]
        self.input_scale = float(sidecar["input"].get("scale", 0.0))
        self.input_zero_point = int(sidecar["input"].get("zero_point", 0))
        self._output_scale = float(sidecar["output"].get("scale", 0.0))
        self._output_zero_point = int(sidecar["output"].get("zero_point", 0))
        # Only a free batch (-1 in the file's signature) is resized: a batch-1 export hard-codes its batch in
        # reshapes, which XNNPACK refuses to resize or, without the delegate, could compute something else silently.
        self.batch_free = int(self._input.get("shape_signature", self._input["shape"])[0]) == -1
        self._batch = 1  # the batch size the interpreter is allocated for
        self.last_invoke_s = 0.0  # of the last classify or classify_batch, all its interpreter calls together
        self.invocations = 0  # interpreter calls since loading (a public count: one per frame is what batching buys)

    def _check_tensor(self, name, actual, promised):
        shape = [int(d) for d in actual["shape"]]
        problems = []
        if shape != list(promised["shape"]):
            problems.append(f"shape {shape} (sidecar: {promised['shape']})")
        if np.dtype(actual["dtype"]) != np.dtype(_DTYPES[promised["dtype"]]):
            problems.append(f"dtype {np.dtype(actual['dtype']).name} (sidecar: {promised['dtype']})")
        scale, zero_point = actual["quantization"]
        if promised["dtype"] != "float32" and (
            not math.isclose(scale, promised["scale"], rel_tol=1e-6) or zero_point != promised["zero_point"]
        ):
            problems.append(
                f"quantisation {scale:g}/{zero_point} (sidecar: {promised['scale']:g}/{promised['zero_point']})"
            )
        if problems:
            raise ModelError(
                f"model '{self.path}' {name} has {', '.join(problems)}: sidecar '{self.sidecar_path}' belongs to "
                "another export; pass the matching --sidecar or re-export."
            )

    def input_tensor(self, image):
        """This model's (1, S, S, 3) input for one Pillow RGB picture (already cropped): resized and quantised by
        the training contract (edge/preprocess.py)."""
        return quantize(resize_rgb(image, self.input_size), self.input_dtype, self.input_scale, self.input_zero_point)

    def classify(self, tensor):
        """Class probabilities (float32, one per label) for one prepared input tensor (1, S, S, 3)."""
        start = time.perf_counter()
        values = self._invoke(tensor)[0]
        self.last_invoke_s = time.perf_counter() - start
        return values

    def classify_batch(self, tensors):
        """(N, labels) float32 probabilities for N prepared inputs (N, S, S, 3), in their order: one interpreter
        call for a free-batch file (re-allocated only when N differs from the previous call's), one call per row
        otherwise. Each row's probabilities are those `classify` gives it."""
        start = time.perf_counter()
        if len(tensors) == 0:
            values = np.zeros((0, len(self.labels)), np.float32)
        elif self.batch_free:
            values = self._invoke(tensors)
        else:
            values = np.stack([self._invoke(tensor[None])[0] for tensor in tensors])
        self.last_invoke_s = time.perf_counter() - start
        return values

    def _invoke(self, batch):
        """Dequantised outputs of one invoke() on `batch`, the interpreter resized first if its batch differs."""
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [len(batch), *self._input["shape"][1:]])
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        self.invocations += 1
        return dequantize(self._interpreter.get_tensor(self._output["index"]), self._output_scale,
                          self._output_zero_point)
