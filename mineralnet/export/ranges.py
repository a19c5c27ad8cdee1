"""Percentile activation ranges for int8 (instead of the converter's min/max): the calibrate-only model records,
per activation tensor, the min and max seen on the calibration images, and int8 spreads its 256 levels over that
range, so one outlier value in one image widens the step for every value of that tensor. Here each recorded range
is narrowed to the given percentiles of the values the calibration images actually produce (never widened), in
place in the calibrate-only bytes, before quantize_calibrated. The model's input (pinned to 0-255) and outputs
are left as they are, and so are the LayerNorm statistics int8 keeps float (rewrite.FLOAT_MARKER; the calibrator
records some of them with the range of the op after them, which no percentile of their own values matches).
Measured in benchmarks/RESULTS.md ("int8 faithful to float32").
"""

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mineralnet.export.bias_correction import preserving_interpreter
from mineralnet.export.rewrite import FLOAT_MARKER


RELATIVE_TOLERANCE = 1e-4  # a bound moved by less than this share of the range is float rounding (the
# interpreter's kernels against the calibrator's), not an outlier: left as recorded


def _ranged_tensors(buffer):
    """{tensor index: (writable min view, writable max view)} of the per-tensor calibrated ranges in `buffer`
    (by index: a converted file may give two tensors the same name)."""
    subgraph = schema.Model.GetRootAs(buffer, 0).Subgraphs(0)
    ends = {subgraph.Inputs(i) for i in range(subgraph.InputsLength())}
    ends |= {subgraph.Outputs(i) for i in range(subgraph.OutputsLength())}
    found = {}
    for index in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(index)
        quantization = tensor.Quantization()
        if index in ends or FLOAT_MARKER in tensor.Name().decode() or quantization is None:
            continue
        if quantization.MinLength() != 1 or quantization.MaxLength() != 1:
            continue
        found[index] = (quantization.MinAsNumpy(), quantization.MaxAsNumpy())
    return found


def percentile_ranges(calibrated, images, percentile=99.99):
    """(calibrate-only bytes whose activation ranges are narrowed to the [100 - percentile, percentile] percentiles
    of each tensor's values over `images` (uint8, as the calibration saw them), number of tensors narrowed)."""
    buffer = bytearray(calibrated)
    ranged = _ranged_tensors(buffer)
    interpreter = preserving_interpreter(calibrated)
    details = {d["index"]: d for d in interpreter.get_tensor_details() if d["index"] in ranged}
    entry = interpreter.get_input_details()[0]
    tail = 1.0 - percentile / 100.0
    lows, highs, counts = {}, {}, {}
    for image in images:
        interpreter.set_tensor(entry["index"], image[None].astype(np.float32))
        interpreter.invoke()
        for index, detail in details.items():
            values = interpreter.get_tensor(index).ravel()
            counts[index] = counts.get(index, 0) + values.size
            # keep only as many extremes as the whole set's tail can hold: the percentile is among them
            keep = min(values.size, int(np.ceil(tail * values.size * len(images))) + 1)
            low = np.concatenate([lows.get(index, values[:0]), np.partition(values, keep - 1)[:keep]])
            high = np.concatenate([highs.get(index, values[:0]), np.partition(values, values.size - keep)[-keep:]])
            lows[index], highs[index] = np.sort(low)[:keep], np.sort(high)[-keep:]
    narrowed = 0
    for index, (low_view, high_view) in ranged.items():
        if index not in counts:
            continue
        rank = int(np.floor(tail * counts[index]))  # values beyond the percentile on each side
        low, high = lows[index][min(rank, len(lows[index]) - 1)], highs[index][-1 - min(rank, len(highs[index]) - 1)]
        old_low, old_high = float(low_view[0]), float(high_view[0])
        tolerance = RELATIVE_TOLERANCE * (old_high - old_low)
        new_low = float(low) if low > old_low + tolerance else old_low
        new_high = float(high) if high < old_high - tolerance else old_high
        if new_low < new_high and (new_low, new_high) != (old_low, old_high):
            low_view[0], high_view[0] = new_low, new_high
            narrowed += 1
    return bytes(buffer), narrowed
