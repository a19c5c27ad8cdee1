"""The operators a .tflite file really contains, read from its flatbuffer, and the no-Flex check."""

from collections import Counter

from ai_edge_litert import schema_py_generated as schema

from mineralnet.export.errors import ExportError

_BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def builtin_code(code):
    """The BuiltinOperator of an OperatorCode (flatbuffer reader object): codes above 127 live in BuiltinCode;
    older files keep small codes only in DeprecatedBuiltinCode."""
    return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())


def list_operators(model_bytes):
    """Counter of operator name -> number of uses over all subgraphs; custom ops (Flex included) by their
    custom code, e.g. 'FlexMatrixDeterminant'."""
    model = schema.Model.GetRootAs(model_bytes, 0)
    names = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = builtin_code(code)
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.append(code.CustomCode().decode())
        else:
            names.append(_BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    counts = Counter()
    for graph_index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(graph_index)
        for op_index in range(graph.OperatorsLength()):
            counts[names[graph.Operators(op_index).OpcodeIndex()]] += 1
    return counts


def tensor_names(model_bytes):
    """Names of every tensor of every subgraph (the converter names them after the TensorFlow ops)."""
    model = schema.Model.GetRootAs(model_bytes, 0)
    names = []
    for graph_index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(graph_index)
        names += [graph.Tensors(index).Name().decode() for index in range(graph.TensorsLength())]
    return names


def check_no_flex(model_bytes, what):
    """Raise ExportError naming every Flex (TensorFlow Select) op in the model: edge runtimes have none."""
    flex = sorted(name for name in list_operators(model_bytes) if name.startswith("Flex"))
    if flex:
        raise ExportError(
            f"the {what} model uses Flex (TensorFlow Select) ops {', '.join(flex)}, which edge runtimes lack: "
            "replace the layers producing them with TFLite builtin operations."
        )
