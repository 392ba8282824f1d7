"""Finding MoE routers and evaluating them under static bindings.

A router is a node whose result decides which expert runs:
- If: its condition picks a branch;
- Where: its condition picks one of two expert outputs;
- TopK / ArgMax / ArgMin: its indices pick experts (gate values stay computed at run time);
- Gather / GatherElements with indices into a Concat/stack of expert outputs.
A router is precomputable when its decision tensor reduces to bound inputs and constants; that
tensor is evaluated with onnxruntime on the extracted sub-model, once per bound value.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from vidcc.ir import Graph, Node
from vidcc.ir.tensor import TensorType

RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
EVAL_DOMAINS = {"", "ai.onnx", "com.microsoft"}  # what onnxruntime can evaluate
INDEX_ROUTERS = {"TopK", "ArgMax", "ArgMin"}
GATHERS = {"Gather", "GatherElements"}


@dataclass
class Router:
    node: Node
    tensor: str  # the decision tensor, evaluated per bound value

    @property
    def name(self) -> str:
        return self.node.name or f"{self.node.op_type}#{self.node.id}"


def static_tensors(graph: Graph, bound: set[str]) -> tuple[set[str], set[str]]:
    """(tensors known at compile time, the subset that depends on a bound input). One forward pass
    in topological order instead of one ancestors() query per candidate."""
    known = set(graph.constants) | (bound & set(graph.inputs))
    dep = bound & set(graph.inputs)
    for node in graph.toposort():
        if node.op_type in RANDOM_OPS or node.domain not in EVAL_DOMAINS:
            continue
        reads = [i for i in node.inputs if i] + list(node.implicit_inputs)
        if all(i in known for i in reads):
            outs = [o for o in node.outputs if o]
            known.update(outs)
            if any(i in dep for i in reads):
                dep.update(outs)
    return known, dep


def unbound_sources(graph: Graph, tensor: str, bound: set[str]) -> list[str]:
    """What keeps `tensor` from being known at compile time: unbound graph inputs (and random ops)
    among its ancestors."""
    p = graph.producer(tensor)
    if p is None:
        return [tensor] if tensor in graph.inputs and tensor not in bound else []
    found: dict[str, None] = {}
    for i in nx.ancestors(graph.nx, p.id) | {p.id}:
        n = graph.node(i)
        if n.op_type in RANDOM_OPS or n.domain not in EVAL_DOMAINS:
            found[f"{n.op_type} {n.name}".strip()] = None
        for t in list(n.inputs) + list(n.implicit_inputs):
            if t in graph.inputs and t not in bound:
                found[t] = None
    return sorted(found)


def _concat_source(graph: Graph, data: str, axis: int) -> Node | None:
    p = graph.producer(data)
    if p is None or p.op_type != "Concat":
        return None
    rank = len(graph.type_of(data).shape or ()) or None
    cat_axis = p.attr("axis")
    if rank is None or axis % rank != cat_axis % rank:
        return None
    return p


def find_routers(graph: Graph, bound: set[str]) -> tuple[list[Router], list[dict]]:
    """Precomputable routers, and explain events for routers that are not."""
    known, dep = static_tensors(graph, bound)
    routers: list[Router] = []
    refused: list[dict] = []

    def refuse(node: Node, tensor: str, what: str = "router") -> None:
        why = unbound_sources(graph, tensor, bound)
        reason = f"{what} depends on {', '.join(why)}" if why else f"{what} is not evaluable at compile time"
        refused.append({"kind": "refused", "node": node.name or node.label, "op": node.op_type, "reason": reason})

    for node in graph.toposort():
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            continue
        if op == "If":
            cond = node.inputs[0]
            if cond in dep:
                routers.append(Router(node, cond))
            elif cond not in known:  # a condition of constants alone is fold-constants' business
                refuse(node, cond)
        elif op == "Where":
            cond = node.inputs[0]
            if cond not in dep:  # masks made of constants (attention masks ...) are no routers
                continue
            if cond in known:
                if node.inputs[1] not in known or node.inputs[2] not in known:
                    routers.append(Router(node, cond))
            else:
                refuse(node, cond)
        elif op in INDEX_ROUTERS:
            x = node.inputs[0]
            if all(i in known for i in node.inputs if i):
                if x in dep:
                    routers.append(Router(node, node.outputs[-1] if op == "TopK" else node.outputs[0]))
            else:
                refuse(node, x)
        elif op in GATHERS and len(node.inputs) > 1:
            data, idx = node.inputs[0], node.inputs[1]
            if idx in dep and idx in known and data not in known and _concat_source(graph, data, node.attr("axis", 0)):
                routers.append(Router(node, idx))
    return routers, refused


def sub_model(graph: Graph, tensors: list[str], bound: list[str]):
    """A ModelProto computing `tensors` from the bound inputs: the producers' ancestors only."""
    from vidcc.onnx_io import to_proto

    ids: set[int] = set()
    for t in tensors:
        p = graph.producer(t)
        if p is not None and p.id not in ids:
            ids |= nx.ancestors(graph.nx, p.id) | {p.id}
    sub = Graph(graph.name + "_routers")
    sub.meta, sub.opsets = graph.meta, dict(graph.opsets)
    reads: set[str] = set()
    for n in sorted((graph.node(i) for i in ids), key=lambda n: n.id):
        sub.add_node(n.op_type, n.inputs, n.outputs, name=n.name, domain=n.domain, attrs=n.attrs)
        reads.update(i for i in n.inputs if i)
        reads.update(n.implicit_inputs)
    for name in bound:
        sub.inputs.append(name)
        sub.types[name] = graph.type_of(name)
    for name in reads | set(tensors):
        if name in graph.constants:
            sub.constants[name] = graph.constants[name]
    for t in tensors:
        sub.outputs.append(t)
        ty = graph.type_of(t)
        sub.types[t] = ty if ty.dtype else TensorType()
    model = to_proto(sub)
    for vi in model.graph.output:
        if not vi.type.tensor_type.elem_type:  # untyped (e.g. just inlined): onnxruntime infers it
            vi.ClearField("type")
    return model


def bound_feed(graph: Graph, name: str, value, shape: tuple | None = None) -> np.ndarray:
    """Every element of the input equals the bound value; the shape is the sample's, else the declared
    one with symbolic dims taken as 1."""
    t = graph.type_of(name)
    if shape is None:
        shape = tuple(d if isinstance(d, int) else 1 for d in (t.shape or ()))
    dtype = t.np_dtype if t.dtype else np.float32
    return np.full(shape, value, dtype=dtype)


def evaluate(graph: Graph, tensors: list[str], feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Values of `tensors` for each feed dict (feeds hold the bound inputs), via onnxruntime."""
    import onnxruntime as ort

    tensors = list(dict.fromkeys(tensors))
    direct = [t for t in tensors if graph.producer(t) is None]
    computed = [t for t in tensors if graph.producer(t) is not None]
    sess = None
    if computed:
        bound = sorted(feeds[0])
        model = sub_model(graph, computed, bound)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        used = {i.name for i in sess.get_inputs()}
    results = []
    for feed in feeds:
        out = {t: np.asarray(feed[t]) if t in feed else graph.constant(t) for t in direct}
        if sess is not None:
            out.update(zip(computed, sess.run(computed, {k: v for k, v in feed.items() if k in used})))
        results.append(out)
    return results
