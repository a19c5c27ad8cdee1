"""The `dynamic` format's finishing step: its depthwise filters back to float, so XNNPACK takes the whole file.

The dynamic-range conversion stores every convolution's and fully connected layer's weights as int8 per channel
and leaves the activations float. XNNPACK runs FULLY_CONNECTED and CONV_2D of that kind with its QD8 kernels: each
input row is quantized to int8 at run time with its own scale, and the matrix product is int8 (x86 VNNI, ARM
dot-product). Ranges measured per row on the image itself, instead of one calibrated range per tensor, make this
int8 far closer to float32 than the full-integer `int8` (benchmarks/RESULTS.md: 97.9-100 % agreement with the Keras
model against 93-98 %, a fifth of the probability error), at 0.40x float32's latency against int8's 0.36x.

XNNPACK has no such kernel for DEPTHWISE_CONV_2D: an int8 depthwise filter on a float input leaves the op to the
reference kernel, and each of ConvNeXt's 7x7 depthwise slabs cut the delegate (51 operators outside, 19 partitions
at 224 px). Depthwise filters are ~0.3 % of ConvNeXt-T's weights and 2.4 % of its MACs, so they are stored float:
dequantized exactly as the interpreter would (per-channel scale and zero point), which changes no value.
"""

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from mineralnet.export.operators import builtin_code

DEPTHWISE = schema.BuiltinOperator.DEPTHWISE_CONV_2D


def float_depthwise_filters(model_bytes):
    """(the .tflite bytes with every int8 DEPTHWISE_CONV_2D filter stored as its float32 values, filters changed)."""
    reader = schema.Model.GetRootAs(model_bytes, 0)
    codes = [builtin_code(reader.OperatorCodes(index)) for index in range(reader.OperatorCodesLength())]
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    changed, done = 0, set()
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            if codes[operator.opcodeIndex] != DEPTHWISE:
                continue
            tensor = subgraph.tensors[operator.inputs[1]]
            buffer = model.buffers[tensor.buffer]
            if tensor.type != schema.TensorType.INT8 or buffer.data is None:  # (data past 2 GB: left as it is)
                continue
            if tensor.buffer in done:  # a filter buffer two tensors share: its values are float already
                tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
                continue
            quantization = tensor.quantization
            values = np.frombuffer(bytes(bytearray(buffer.data)), np.int8)
            values = values.reshape(tensor.shape).astype(np.float32)
            shape = [1] * values.ndim
            shape[quantization.quantizedDimension] = -1
            scale = np.asarray(quantization.scale, np.float32).reshape(shape)
            zero_point = np.asarray(quantization.zeroPoint, np.float32).reshape(shape)
            dequantized = ((values - zero_point) * scale).astype(np.float32)
            buffer.data = np.frombuffer(dequantized.tobytes(), np.uint8)
            tensor.type, tensor.quantization = schema.TensorType.FLOAT32, None
            done.add(tensor.buffer)
            changed += 1
    if not changed:
        return model_bytes, 0
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), changed
