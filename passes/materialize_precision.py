"""materialize-precision: turn precision tags into tensor types, converted constants and casts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from vidcc.ir import Graph, Node, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.precision_schema import (LOW_DTYPES, MAX_FINITE, NAMES, first_opset_allowing, node_binding,
                                    schema_of, to_dtype)

from .tag_precision import kernel_gap

STASH_OPS = {"LayerNormalization", "GroupNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
             "SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}


@dataclass(frozen=True)
class MaterializePrecision(Pass):
    """Make the precision tags of tag-precision real, so every runtime computes what was decided
    (TensorRT strongly typed networks take types as given; every op sees consistent input types).

    Rewrite cases:
    - a node tagged fp16/bf16: each type parameter of its schema that carried float32 is re-bound to the
      low dtype -- inputs, outputs and constants on it; parameters the schema fixes (Resize scales,
      LayerNormalization Mean/InvStdDev, int64 shapes) keep their type; ops with `stash_type` get
      stash_type=1 (fp32 statistics); Cast(to=float) becomes Cast(to=low), Constant/ConstantOfShape
      values are converted;
    - a float constant read by low nodes gets one converted copy (saturated to the dtype's range); the
      fp32 original stays only while fp32 nodes still read it (two copies, no runtime cast);
    - a Cast is inserted only where a tensor's stored type differs from what a reader needs, once per
      (tensor, dtype) however many readers; readers of free parameters (Shape, the input of Cast) take
      any type and get none, unless the target's backend has no kernel for the op in that type;
    - keep_io_types=true: float graph inputs and outputs stay float32 (casts after inputs, before
      outputs; output names kept); false: they become the low dtype;
    - a low-tagged op that needs a newer opset for the low dtype (bf16 Conv needs opset 22) raises the
      default domain when every other op allows it, else it is demoted to fp32 (a detail says why);
    - cast pairs and lossless cast chains left over (Cast(int->float) then Cast(float->fp16), fp16->fp32->fp16)
      are removed by simplify-casts' exact rules.
    """

    name = "materialize-precision"
    lossy = True

    keep_io_types: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        lows = Counter(n.precision for n in graph.nodes if n.precision in LOW_DTYPES)
        if not lows:
            return PassResult(False, {"low_nodes": 0})
        io_dtype = LOW_DTYPES[lows.most_common(1)[0][0]]
        details: list[dict] = []
        raised = self._opset(graph, details)
        m = _Materializer(graph, ctx.target)
        orig_io = {t: graph.type_of(t).dtype for t in graph.inputs + graph.outputs}

        if not self.keep_io_types:
            for name in graph.inputs:
                if orig_io[name] == T.FLOAT and name not in graph.constants:
                    m.retype(name, io_dtype)
        for node in graph.toposort():
            m.node(node)
        if self.keep_io_types:
            for name in list(graph.outputs):
                if orig_io[name] == T.FLOAT and m.dtype(name) != T.FLOAT:
                    m.cast_output(name)
        else:
            for name in graph.outputs:
                if orig_io[name] == T.FLOAT:
                    m.set_io_meta(name)
        for name in graph.inputs:
            if name in graph.io_meta:
                m.set_io_meta(name)
        for c in m.replaced_constants:
            if not graph.is_used(c):
                del graph.constants[c]
        simplified = _simplify_casts(graph, ctx)
        casts = sum(1 for n in graph.nodes_by_op("Cast") if n.metadata.get("vidcc.inserted") == "precision")
        stats = {"low_nodes": sum(lows.values()), "casts_inserted": casts,
                 "constants_converted": m.converted, "stash_type_set": m.stash_set}
        if raised:
            stats["opset_raised_to"] = raised
        if simplified:
            stats["casts_simplified"] = simplified
        details += m.details
        return PassResult(True, stats, details)

    def _opset(self, graph: Graph, details: list[dict]) -> int:
        """Raise the default domain for low ops that need it, or demote them to fp32."""
        version = graph.opsets.get("", graph.opsets.get("ai.onnx", 0))
        need: dict[int, list[Node]] = {}
        for node in graph.nodes:
            low = LOW_DTYPES.get(node.precision)
            if low is None or node.op_type in ("Cast", "Constant", "ConstantOfShape"):
                continue
            b = node_binding(graph, node)
            refused = {p for p, t in zip(b.inputs + b.outputs, list(node.inputs) + list(node.outputs))
                       if t and graph.type_of(t).dtype == T.FLOAT and not p.startswith("=")
                       and not b.is_free(p) and not b.allows(p, low)}
            if refused:
                v = first_opset_allowing(node.op_type, node.domain, refused, low, version) or 0
                need.setdefault(v, []).append(node)
        if not need:
            return 0
        from vidcc.opsets import require

        target = max(need)
        why = require(graph, "", target) if target else None
        demote = {v: "no opset up to 23 admits it" for v in need if v == 0}
        if why is not None:
            demote.update({v: why for v in need})
        for v, reason in demote.items():
            for node in need[v]:
                details.append({"kind": "precision", "node": node.name or node.label, "op": node.op_type,
                                "from": node.precision, "to": "fp32",
                                "reason": f"{node.op_type} cannot take {node.precision} here: {reason}"})
                node.precision = "fp32"
        return target if target and why is None else 0


class _Materializer:
    """Walks nodes in topological order, tracking each float tensor's stored dtype."""

    def __init__(self, graph: Graph, target=None):
        self.g = graph
        self.target = target  # whose backend must have a kernel for what a free parameter is fed
        self.stored: dict[str, int] = {}
        self.casts: dict[tuple[str, int], str] = {}
        self.copies: dict[tuple[str, int], str] = {}
        self.replaced_constants: set[str] = set()
        self.converted = 0
        self.stash_set = 0
        self.details: list[dict] = []
        self.orig: dict[str, int] = {}

    def original(self, t: str) -> int:
        if t not in self.orig:
            self.orig[t] = self.g.type_of(t).dtype
        return self.orig[t]

    def dtype(self, t: str) -> int:
        return self.stored.get(t) or self.original(t)

    def retype(self, t: str, dtype: int) -> None:
        self.original(t)
        self.stored[t] = dtype
        self.g.types[t] = TensorType(dtype, self.g.type_of(t).shape)

    def set_io_meta(self, name: str) -> None:
        t = self.g.type_of(name)
        vi = self.g.io_meta.get(name)
        if vi is not None and vi.type.HasField("tensor_type") and t.dtype and vi.type.tensor_type.elem_type != t.dtype:
            new = type(vi)()
            new.CopyFrom(vi)
            new.type.tensor_type.elem_type = t.dtype
            self.g.io_meta[name] = new

    # ---- per node -------------------------------------------------------------------------------
    def node(self, node: Node) -> None:
        g = self.g
        low = LOW_DTYPES.get(node.precision)
        want = low or T.FLOAT
        if node.op_type in ("Cast", "Constant", "ConstantOfShape") and node.domain in ("", "ai.onnx"):
            self._attr_typed(node, low)
            return
        b = node_binding(g, node)
        params = dict.fromkeys(b.inputs + b.outputs)
        in_params = {p for p, t in zip(b.inputs, node.inputs) if t and self.original(t) == T.FLOAT}
        only_float_param = next(iter(in_params)) if len(in_params) == 1 else None
        for p in params:
            ins, outs = b.slots(p)
            ins = [i for i in ins if node.inputs[i] and self.original(node.inputs[i]) == T.FLOAT]
            outs = [i for i in outs if node.outputs[i] and self.original(node.outputs[i]) == T.FLOAT]
            if not ins and not outs:
                continue
            if p.startswith("=") or (low is not None and not b.allows(p, low)):
                target = T.FLOAT  # fixed by the schema (Resize scales) or not admitted low
            elif b.is_free(p) and p == only_float_param:
                # Shape, Equal, Cast's input: any type will do, as long as the inputs sharing it agree
                # (not Pow's exponent: runtimes like TVM want it in the base's type)
                seen = {self.dtype(node.inputs[i]) for i in ins if not g.is_constant(node.inputs[i])}
                only = next(iter(seen)) if len(seen) == 1 else None
                target = only if only and b.allows(p, only) and self.computes(node, only) else want
            else:
                target = want
            for i in ins:
                self._feed(node, i, target)
            for i in outs:
                if target != T.FLOAT:
                    self.retype(node.outputs[i], target)
        if low is not None and node.op_type in STASH_OPS:
            schema = schema_of(node.op_type, node.domain, g.opsets)
            has = "stash_type" in node.attrs or (schema is not None and "stash_type" in schema.attributes)
            if has and node.attr("stash_type") != 1:  # explicit, for readers that do not apply defaults
                g.set_attr(node, "stash_type", 1)
                self.stash_set += 1

    def computes(self, node: Node, dtype: int) -> bool:
        """Whether the target's backend runs the node on `dtype` inputs (ORT's CUDA EP has no bf16 Equal)."""
        return dtype not in NAMES or not kernel_gap(self.g, node, self.target, NAMES[dtype], 0)

    def _feed(self, node: Node, slot: int, target: int) -> None:
        g, t = self.g, node.inputs[slot]
        if g.is_constant(t):
            c = g.constants[t]
            if c.dtype == target:
                return
            key = (t, target)
            if key not in self.copies:
                arr = c.array
                if target in MAX_FINITE and target != T.FLOAT and np.isfinite(arr).any() and \
                        float(np.max(np.abs(arr[np.isfinite(arr)]))) > MAX_FINITE[target]:
                    self.details.append({"kind": "precision", "node": node.name or node.label, "op": node.op_type,
                                         "from": "fp32", "to": NAMES[target],
                                         "reason": f"constant '{t}' saturated to {NAMES[target]}'s range"})
                value = to_dtype(arr, target) if target != T.FLOAT else np.asarray(arr, np.float32)
                self.copies[key] = g.add_constant(value, hint=f"{t}_{NAMES[target]}")
                self.converted += 1
                self.replaced_constants.add(t)
            g.set_input(node, slot, self.copies[key])
            return
        if self.dtype(t) == target:
            return
        g.set_input(node, slot, self.cast(t, target))

    def cast(self, t: str, target: int) -> str:
        key = (t, target)
        if key not in self.casts:
            g = self.g
            out = g.unique_name(f"{t}_{NAMES[target]}")
            g.add_node("Cast", [t], [out], name=g.unique_node_name(f"{t}_to_{NAMES[target]}"),
                       attrs={"to": target}, types=[TensorType(target, g.type_of(t).shape)],
                       metadata={"vidcc.inserted": "precision"}).precision = NAMES[target]
            self.stored[out] = target
            self.casts[key] = out
        return self.casts[key]

    def _attr_typed(self, node: Node, low: int | None) -> None:
        g = self.g
        out = node.outputs[0]
        if low is None or self.original(out) != T.FLOAT:
            return
        if node.op_type == "Cast":
            g.set_attr(node, "to", low)
        else:
            key = "value"
            if node.op_type == "Constant" and key not in node.attrs:
                return  # value_float(s) attributes: leave float32
            value = node.attr(key)
            arr = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
            g.set_attr(node, key, numpy_helper.from_array(to_dtype(arr, low), value.name if value is not None else ""))
        self.retype(out, low)

    def cast_output(self, name: str) -> None:
        """A graph output stored low: its producer writes a new tensor, a Cast writes the output name."""
        g = self.g
        p = g.producer_slot(name)
        if p is None or name in g.inputs:
            return
        node, slot = p
        low = self.dtype(name)
        shape = g.type_of(name).shape
        inner = g.unique_name(f"{name}_{NAMES[low]}")
        g.rename_output(node, slot, inner)
        self.stored[inner] = low
        g.types[inner] = TensorType(low, shape)
        g.add_node("Cast", [inner], [name], name=g.unique_node_name(f"{name}_to_fp32"), attrs={"to": T.FLOAT},
                   types=[TensorType(T.FLOAT, shape)], metadata={"vidcc.inserted": "precision"}).precision = "fp32"
        self.stored[name] = T.FLOAT


def _simplify_casts(graph: Graph, ctx: PassContext) -> int:
    """Exact cast-chain rules of the cleanup pass simplify-casts (fp16->fp32->fp16 and the like)."""
    try:
        from vidcc.passes.simplify_casts import SimplifyCasts
    except ImportError:
        return 0
    before = len(graph.nodes_by_op("Cast"))
    SimplifyCasts()(graph, ctx)
    return before - len(graph.nodes_by_op("Cast"))


PASSES = [MaterializePrecision]
