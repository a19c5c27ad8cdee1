"""How the LiteRT interpreter's default XNNPACK delegate takes a .tflite file: the number of delegate partitions
and the operators it leaves to the builtin kernels, read from an interpreter after the delegate was applied.

Every partition boundary costs a copy between XNNPACK's and the builtin kernels' tensors and keeps the builtin
(often reference-speed) kernel for the op outside, so a model that is one partition runs at XNNPACK speed
throughout. The interpreter lists the file's original nodes followed by one DELEGATE node per partition; a
partition is a convex piece of the graph, so the original nodes it replaced are exactly those reached walking
back from its outputs until its inputs.
"""

from collections import Counter

from mineralnet.export.verify import make_interpreter

DELEGATE = "DELEGATE"

# What may stay outside the delegate of a full-integer file: uint8<->int8 requantisation of the camera pixels
# and of the output probabilities, which XNNPACK does not take (each a cheap elementwise pass over the input
# image or the class scores, not over the network's feature maps).
ALLOWED_OUTSIDE = {"QUANTIZE", "DEQUANTIZE"}


def delegation(model_bytes):
    """{"partitions": number of DELEGATE nodes, "outside": {op name: count} of nodes left to builtin kernels}."""
    partitions, outside = outside_nodes(make_interpreter(model_bytes, 1))
    counts = Counter(node["op_name"] for node in outside)
    return {"partitions": partitions, "outside": dict(sorted(counts.items()))}


def outside_nodes(interpreter):
    """(number of delegate partitions, the node dicts the delegate left out) of an allocated interpreter."""
    nodes = interpreter._get_ops_details()  # private but stable since TF 2.5; pinned by tests/export
    delegates = [node for node in nodes if node["op_name"] == DELEGATE]
    originals = [node for node in nodes if node["op_name"] != DELEGATE]
    producer = {int(tensor): node["index"] for node in originals for tensor in node["outputs"]}
    by_index = {node["index"]: node for node in originals}
    taken = set()
    for delegate in delegates:
        boundary = {int(tensor) for tensor in delegate["inputs"]}
        pending = [int(tensor) for tensor in delegate["outputs"]]
        seen = set()
        while pending:
            tensor = pending.pop()
            if tensor in seen or tensor in boundary or tensor not in producer:
                continue
            seen.add(tensor)
            index = producer[tensor]
            if index not in taken:
                taken.add(index)
                pending.extend(int(t) for t in by_index[index]["inputs"] if int(t) >= 0)
    return len(delegates), [node for node in originals if node["index"] not in taken]


def describe(result):
    """'1 partition, outside: QUANTIZE x2' (for the report table)."""
    outside = ", ".join(f"{name} x{count}" for name, count in result["outside"].items()) or "nothing"
    plural = "" if result["partitions"] == 1 else "s"
    return f"{result['partitions']} partition{plural}, outside: {outside}"
