"""Run a .tflite file with the LiteRT interpreter the device uses and measure it against the Keras model:
accuracy, agreement, probability error, size and latency."""

import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mineralnet.export.errors import ExportError
from mineralnet.metrics import classification_report

LATENCY_THREADS = (1, 2)
LATENCY_RUNS = 50  # timed invocations per thread count, after LATENCY_WARMUP untimed ones
LATENCY_WARMUP = 5


def make_interpreter(model_bytes, threads):
    interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def tensor_contract(detail):
    """Shape, dtype, scale and zero point of an interpreter tensor; scale 0.0 means not quantised."""
    scale, zero_point = detail["quantization"]
    return {
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def _as_input(image, detail):
    """One uint8 (S, S, 3) image as the model's input tensor, quantised if the input is an integer type."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return image[None].astype(dtype)
    scale, zero_point = detail["quantization"]
    values = image.astype(np.float32) / scale + zero_point if scale else image.astype(np.float32)
    limits = np.iinfo(dtype)
    return np.clip(np.round(values), limits.min, limits.max).astype(dtype)[None]


def _as_probabilities(output, detail):
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return output.astype(np.float64)
    return (output.astype(np.float64) - zero_point) * scale


def predict(interpreter, images):
    """(N, num_classes) probabilities for (N, S, S, 3) uint8 images, one invocation per image (batch is 1)."""
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    rows = []
    for image in images:
        interpreter.set_tensor(input_detail["index"], _as_input(image, input_detail))
        interpreter.invoke()
        rows.append(_as_probabilities(interpreter.get_tensor(output_detail["index"])[0], output_detail))
    return np.stack(rows)


def invocation_times(interpreter, image, runs, warmup=LATENCY_WARMUP):
    """Wall times in ms of `runs` invocations on one image, after `warmup` untimed ones (the first calls pack
    weights and fault pages in)."""
    input_detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(input_detail["index"], _as_input(image, input_detail))
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def percentiles(times):
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


BATCH_CHECK_IMAGES = 8
MAX_BATCH_DIFF = 1e-5  # probability units: float rounding; an integer file must agree exactly (one step is 1/256)


def check_batch(model_bytes, images, fmt):
    """For a file with a free batch dimension: the first BATCH_CHECK_IMAGES `images` in one invoke() give the
    probabilities one invoke() per image gives (up to float rounding), else ExportError. Returns what was checked
    (recorded in the report): a kernel that mixed the rows of a batch would mis-sort particles silently."""
    images = images[:BATCH_CHECK_IMAGES]
    interpreter = make_interpreter(model_bytes, max(LATENCY_THREADS))
    detail = interpreter.get_input_details()[0]
    if int(detail["shape_signature"][0]) != -1:
        raise ExportError(f"the {fmt} model's batch dimension is fixed ({list(detail['shape_signature'])}) although "
                          "--batch dynamic was asked: the converter kept a static batch.")
    single = predict(interpreter, images)
    interpreter.resize_tensor_input(detail["index"], [len(images), *detail["shape"][1:]])
    interpreter.allocate_tensors()
    detail, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(detail["index"], np.concatenate([_as_input(image, detail) for image in images]))
    interpreter.invoke()
    batched = _as_probabilities(interpreter.get_tensor(output["index"]), output)
    difference = float(np.abs(batched - single).max())
    exact = np.dtype(output["dtype"]).kind != "f"
    if difference > (0.0 if exact else MAX_BATCH_DIFF):
        raise ExportError(f"the {fmt} model gives a batch of {len(images)} test images probabilities up to "
                          f"{difference:.2g} away from single calls; nothing was written: export without --batch.")
    return {"size": "dynamic", "checked_images": len(images), "max_abs_prob_diff_vs_single": difference}


def latency_ms(interpreter, image, runs=LATENCY_RUNS):
    """p50 and p90 in ms over `runs` timed invocations on one image."""
    return percentiles(invocation_times(interpreter, image, runs))


def classification_metrics(y_true, y_pred):
    """Accuracy and macro precision/recall, computed as in the evaluation report (mineralnet.metrics)."""
    num_classes = int(max(np.max(y_true), np.max(y_pred))) + 1
    report = classification_report(y_true, y_pred, [str(i) for i in range(num_classes)])
    return {"accuracy": report["accuracy"], "macro_precision": report["precision_macro"],
            "macro_recall": report["recall_macro"]}


def verify(model_bytes, images, y_true, reference):
    """Everything the report says about one model: metrics on `images` against labels `y_true`, agreement and
    probability error against the Keras `reference` probabilities, the tensor contract and the latency; `top1`
    (the predicted class per image, for the gate against float32: mineralnet.export.gate) is for the caller to
    pop, not for the report."""
    interpreters = {threads: make_interpreter(model_bytes, threads) for threads in LATENCY_THREADS}
    evaluator = interpreters[max(LATENCY_THREADS)]
    probabilities = predict(evaluator, images)
    difference = np.abs(probabilities - reference)
    return {
        "size_bytes": len(model_bytes),
        **classification_metrics(y_true, probabilities.argmax(1)),
        "agreement_with_keras": float(np.mean(probabilities.argmax(1) == reference.argmax(1))),
        "mean_abs_prob_diff": float(difference.mean()),
        "max_abs_prob_diff": float(difference.max()),
        "latency_ms": {str(threads): latency_ms(interp, images[0]) for threads, interp in interpreters.items()},
        "input": tensor_contract(evaluator.get_input_details()[0]),
        "output": tensor_contract(evaluator.get_output_details()[0]),
        "top1": probabilities.argmax(1),
    }
