"""Redundant Cast and Cast-chain removal."""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto as T

from vidcc.ir import Graph
from vidcc.pass_manager import Pass, PassContext, PassResult

# dtype -> the dtypes that hold each of its values exactly (a cast there and back is the identity)
_EXACT = {
    T.BOOL: {T.INT8, T.UINT8, T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT16, T.BFLOAT16,
             T.FLOAT, T.DOUBLE},
    T.INT8: {T.INT16, T.INT32, T.INT64, T.FLOAT16, T.BFLOAT16, T.FLOAT, T.DOUBLE},
    T.UINT8: {T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT16, T.FLOAT, T.DOUBLE},
    T.INT16: {T.INT32, T.INT64, T.FLOAT, T.DOUBLE},
    T.UINT16: {T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT, T.DOUBLE},
    T.INT32: {T.INT64, T.DOUBLE},
    T.UINT32: {T.INT64, T.UINT64, T.DOUBLE},
    T.FLOAT16: {T.FLOAT, T.DOUBLE},
    T.BFLOAT16: {T.FLOAT, T.DOUBLE},
    T.FLOAT: {T.DOUBLE},
}


@dataclass(frozen=True)
class SimplifyCasts(Pass):
    """Remove casts that change nothing and shorten cast chains that lose nothing.

    Rewrite cases:
    - y = Cast(x, to=dtype of x) and CastLike(x, like) with like of x's dtype: readers of y read x;
    - Cast(Cast(x, to=A), to=B) where A holds every value of x exactly (int32->int64->float,
      fp16->fp32->fp16): becomes Cast(x, to=B), or x itself when B is x's dtype;
    - never touched: a narrowing first cast (fp32->fp16->fp32 rounds, so it is kept).
    """

    name = "simplify-casts"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = shortened = 0
        for node in graph.nodes_by_op("Cast") + graph.nodes_by_op("CastLike"):
            if node.id not in graph.nx or node.domain not in ("", "ai.onnx"):
                continue
            src, out = node.inputs[0], node.outputs[0]
            src_t = graph.type_of(src).dtype
            to = node.attr("to") if node.op_type == "Cast" else graph.type_of(node.inputs[1]).dtype
            if not src_t or not to:
                continue
            if src_t == to:
                if _bypass(graph, node):
                    removed += 1
                continue
            if node.op_type != "Cast":
                continue
            inner = graph.producer(src)
            if inner is None or inner.op_type != "Cast" or inner.domain not in ("", "ai.onnx"):
                continue
            x = inner.inputs[0]
            x_t = graph.type_of(x).dtype
            if not x_t or graph.type_of(src).dtype not in _EXACT.get(x_t, ()):
                continue
            graph.set_input(node, 0, x)  # the chain now skips the lossless middle cast
            if not graph.is_used(inner.outputs[0]):
                graph.remove_node(inner)
            shortened += 1
            if x_t == to and _bypass(graph, node):
                removed += 1
        stats = {k: v for k, v in (("removed", removed), ("shortened", shortened)) if v}
        return PassResult(bool(removed or shortened), stats)


def _bypass(graph: Graph, node) -> bool:
    src, out = node.inputs[0], node.outputs[0]
    if out in graph.outputs and (graph.producer(src) is None or src in graph.outputs):
        return False  # the output name needs a node to carry it
    graph.replace_all_uses(out, src)
    if not graph.is_used(out):
        graph.remove_node(node)
        return True
    return False


PASSES = [SimplifyCasts]
