"""Make an exported graph valid at the opset it declares, where torch's down-conversion is not.

The dynamo exporter builds every graph at opset 18 and converts it down when a lower opset is
asked for (``/work/shared/notes/stack.md`` §1; ``export { format = onnx() }`` defaults to 17). The
conversion leaves ``Split(num_outputs = n)`` nodes as they are, but ``num_outputs`` exists only
from opset 18: below it a Split takes its sizes as a second input. GPT-2's attention splits its
fused query/key/value projection this way, so a ``gpt`` export at opset 17 was an invalid model
(the checker: "Unrecognized attribute: num_outputs for operator Split", FTP530).

:func:`legalize` rewrites each such node into the opset-13..17 form, with the sizes its outputs
have in the exporter's shape information (or, failing that, opset 18's rule applied to the
input's static size: chunks of ``ceil(d / n)``, the last one smaller). A node whose sizes are
not static is left alone, and the checker then refuses the graph as before. Nothing else in the
graph changes, so outputs are the same; ``verify`` checks that against PyTorch anyway.
"""

from __future__ import annotations

import math

__all__ = ["legalize"]


def _opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _dims(proto) -> dict[str, list[int | None]]:
    """Known static dims of every named value (None where a dim is symbolic or unknown)."""
    out: dict[str, list[int | None]] = {}
    for v in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in proto.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _sizes(node, axis: int, n: int, dims: dict[str, list[int | None]]) -> list[int] | None:
    outs = [dims.get(o) for o in node.output]
    if all(o is not None for o in outs):
        rank = len(outs[0])
        ax = axis + rank if axis < 0 else axis
        if 0 <= ax < rank and all(len(o) == rank and o[ax] is not None for o in outs):
            return [int(o[ax]) for o in outs]
    src = dims.get(node.input[0])
    if src is not None:
        ax = axis + len(src) if axis < 0 else axis
        if 0 <= ax < len(src) and src[ax] is not None:
            d = int(src[ax])
            chunk = math.ceil(d / n)
            sizes = [chunk] * (n - 1) + [d - chunk * (n - 1)]
            if sizes[-1] >= 0:
                return sizes
    return None


def legalize(proto) -> int:
    """Rewrite ``Split(num_outputs)`` nodes of a below-18 graph in place; returns how many."""
    opset = _opset(proto)
    if opset is None or opset >= 18:
        return 0
    from onnx import helper, numpy_helper
    import numpy as np

    dims: dict | None = None
    taken: set[str] = set()
    fixed = 0
    for node in proto.graph.node:
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "num_outputs" not in attrs or (len(node.input) > 1 and node.input[1]):
            continue
        if dims is None:  # only graphs that have such a node pay for the look-ups
            dims = _dims(proto)
            taken = {i.name for i in proto.graph.initializer} | {n for nd in proto.graph.node for n in nd.output}
        axis = int(helper.get_attribute_value(attrs["axis"])) if "axis" in attrs else 0
        n = int(helper.get_attribute_value(attrs["num_outputs"]))
        sizes = _sizes(node, axis, n, dims)
        if sizes is None or len(sizes) != len(node.output):
            continue
        name = f"{node.name or node.output[0]}_sizes"
        while name in taken:
            name += "_"
        taken.add(name)
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, dtype=np.int64), name))
        keep = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(keep)
        del node.input[1:]
        node.input.append(name)
        fixed += 1
    return fixed
