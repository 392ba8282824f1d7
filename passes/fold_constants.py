"""Constant folding, shape subgraphs included."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vidcc.ir import Graph, Node
from vidcc.onnx_io import DEFAULT_IR_VERSION, _node_proto
from vidcc.pass_manager import Pass, PassContext, PassResult
from .infer_shapes import refresh_types

_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}  # folded as numpy views: no copy of a big weight
_BATCH_BYTES = 512 << 20  # constant bytes fed into one evaluation model


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate what depends only on constants and replace it by initializers.

    Rewrite cases:
    - Constant nodes become initializers;
    - Shape(x) / Size(x) of a tensor with a static shape (and Shape->Gather/Slice of its static
      dims) become constants, so under static or bound input shapes whole Shape->Gather->Concat
      chains fold and Reshape targets become constant;
    - a standard, deterministic node whose inputs are all constants is evaluated (onnxruntime on one
      extracted subgraph per round; ONNX's reference evaluator where onnxruntime has no kernel);
      Identity of a constant is bypassed and Reshape/Squeeze/Unsqueeze/Flatten are folded as views;
    - not folded: a result larger than `size_limit` bytes that is also larger than its constant
      inputs (ConstantOfShape/Expand/Tile to a huge tensor, a Cast that widens a weight), random ops,
      nodes with subgraphs, contrib-domain ops, nodes that produce graph outputs.
    Types are re-inferred after each round, and rounds repeat until nothing more folds.
    """

    name = "fold-constants"
    size_limit: int = 1 << 20
    max_rounds: int = 10

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats = {"constant_nodes": 0, "shapes": 0, "evaluated": 0, "bypassed": 0}
        refused: dict[str, dict] = {}  # node -> last refusal (a node may be refused in several rounds)
        for _ in range(self.max_rounds):
            before = dict(stats)
            self._constant_nodes(graph, stats)
            self._shapes(graph, stats)
            self._evaluate(graph, stats, refused)
            if stats == before:
                break
            refresh_types(graph)
        refused = {k: d for k, d in refused.items() if any(n.name == k for n in graph.nodes_by_op(d["op"]))}
        stats["too_large"] = sum(d["reason"] != _FAILED for d in refused.values())
        stats["failed"] = sum(d["reason"] == _FAILED for d in refused.values())
        details = [{k: v for k, v in d.items() if k != "op"} for d in refused.values()]
        modified = any(stats[k] for k in ("constant_nodes", "shapes", "evaluated", "bypassed"))
        return PassResult(modified, {k: v for k, v in stats.items() if v}, details)

    # ---- Constant nodes --------------------------------------------------------------------------
    def _constant_nodes(self, graph: Graph, stats: dict) -> None:
        for node in graph.nodes_by_op("Constant"):
            if node.domain not in ("", "ai.onnx") or node.outputs[0] in graph.outputs:
                continue
            value = _constant_value(node)
            if value is None:
                continue
            _to_constant(graph, node, [value])
            stats["constant_nodes"] += 1

    # ---- Shape / Size of static tensors ----------------------------------------------------------
    def _shapes(self, graph: Graph, stats: dict) -> None:
        for node in graph.nodes_by_op("Shape") + graph.nodes_by_op("Size"):
            if node.outputs[0] in graph.outputs:
                continue
            shape = graph.type_of(node.inputs[0]).shape
            if _static(shape):
                if node.op_type == "Size":
                    value = np.array(int(np.prod(shape)), np.int64)
                else:
                    value = np.array(shape, np.int64)[_shape_slice(node, len(shape))]
                _to_constant(graph, node, [value])
                stats["shapes"] += 1
            elif shape is not None and node.op_type == "Shape":
                stats["shapes"] += self._partial_shape(graph, node, shape)

    @staticmethod
    def _partial_shape(graph: Graph, shape_node: Node, shape) -> int:
        """Shape(x)->Gather/Slice(const) that only reads x's static dims folds even if x has a
        symbolic dim elsewhere (the usual form under dynamic batch)."""
        dims = list(shape)[_shape_slice(shape_node, len(shape))]
        folded = 0
        for user in graph.consumer_nodes(shape_node.outputs[0]):
            if user.outputs[0] in graph.outputs or user.inputs[0] != shape_node.outputs[0]:
                continue
            if user.op_type == "Gather" and graph.is_constant(user.inputs[1]) and user.attr("axis", 0) == 0:
                idx = graph.constant(user.inputs[1])
                picked = np.take(np.array(dims, dtype=object), idx)
            elif user.op_type == "Slice" and all(graph.is_constant(i) for i in user.inputs[1:] if i):
                args = [graph.constant(i) if i else None for i in user.inputs[1:]]
                starts, ends = int(args[0][0]), int(args[1][0])
                if len(args) > 2 and args[2] is not None and int(args[2][0]) != 0:
                    continue
                step = int(args[3][0]) if len(args) > 3 and args[3] is not None else 1
                picked = np.array(dims, dtype=object)[slice(starts, ends, step)]
            else:
                continue
            if not all(isinstance(d, (int, np.integer)) for d in np.asarray(picked).reshape(-1)):  # take() gives np.int64
                continue
            _to_constant(graph, user, [np.asarray(picked, dtype=np.int64)])
            folded += 1
        return folded

    # ---- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, graph: Graph, stats: dict, refused: dict) -> None:
        folding: set[str] = set()  # tensors this round will make constant
        batch: list[Node] = []
        for node in graph.toposort():
            if not self._foldable(graph, node, folding):
                continue
            ins = [i for i in node.inputs if i]
            if node.op_type == "Identity" and graph.is_constant(ins[0]):
                graph.replace_all_uses(node.outputs[0], ins[0])
                graph.remove_node(node)
                stats["bypassed"] += 1
                continue
            if node.op_type in _VIEWS and all(graph.is_constant(i) for i in ins):
                value = _view(graph, node)
                if value is not None:
                    _to_constant(graph, node, [value])
                    stats["evaluated"] += 1
                    continue
            why = self._too_large(graph, node)
            if why:
                refused[node.name] = _refusal(node, why)
                continue
            batch.append(node)
            folding.update(o for o in node.outputs if o)
        for part in _batches(graph, batch):
            self._run_batch(graph, part, stats, refused)

    def _foldable(self, graph: Graph, node: Node, folding: set[str]) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM or node.op_type == "Constant":
            return False
        if node.has_subgraphs() or not node.inputs and node.op_type not in ("ConstantOfShape",):
            return False
        if any(o in graph.outputs for o in node.outputs):
            return False
        return all(not i or graph.is_constant(i) or i in folding for i in node.inputs)

    def _too_large(self, graph: Graph, node: Node) -> str | None:
        out_bytes = 0
        for o in node.outputs:
            t = graph.type_of(o)
            n = _predicted_size(graph, node) if not _static(t.shape) else int(np.prod(t.shape, dtype=np.int64))
            if n is None:
                continue
            itemsize = np.dtype(t.np_dtype).itemsize if t.dtype else 4
            out_bytes += n * itemsize
        in_bytes = sum(graph.constants[i].nbytes for i in node.inputs if i and i in graph.constants)
        if out_bytes > self.size_limit and out_bytes > in_bytes:
            return f"result is {out_bytes} bytes (> size_limit {self.size_limit} and > its inputs' {in_bytes})"
        return None

    def _run_batch(self, graph: Graph, nodes: list[Node], stats: dict, refused: dict) -> None:
        produced = {o for n in nodes for o in n.outputs if o}
        needed = [o for n in nodes for o in n.outputs if o and graph.is_used(o)]
        if not needed:
            return
        values = _run_ort(graph, nodes, needed, produced)
        if values is None:
            values = _run_reference(graph, nodes, needed, produced)
        for node in nodes:
            if all(o in values for o in node.outputs if o and graph.is_used(o)):
                _to_constant(graph, node, [values.get(o) for o in node.outputs])
                stats["evaluated"] += 1
            else:
                refused[node.name] = _refusal(node, _FAILED)


_FAILED = "could not be evaluated (no onnxruntime kernel, reference evaluator failed)"


def _refusal(node: Node, reason: str) -> dict:
    return {"kind": "refused", "pattern": "fold", "node": node.name, "op": node.op_type, "reason": reason}


def _shape_slice(node: Node, rank: int) -> slice:
    return slice(node.attr("start", 0), node.attr("end", rank) if node.attr("end") is not None else rank)


def _predicted_size(graph: Graph, node: Node) -> int | None:
    """Element count of ops that make big tensors from small inputs, from their constant inputs."""
    c = [graph.constant(i) if i and graph.is_constant(i) else None for i in node.inputs]
    try:
        if node.op_type == "ConstantOfShape" and c[0] is not None:
            return int(np.prod(c[0], dtype=np.int64))
        if node.op_type == "Expand" and c[1] is not None:
            shape = graph.type_of(node.inputs[0]).shape or ()
            return int(np.prod(np.broadcast_shapes(tuple(shape), tuple(int(d) for d in c[1]))))
        if node.op_type == "Tile" and c[1] is not None:
            shape = graph.type_of(node.inputs[0]).shape
            return int(np.prod(shape, dtype=np.int64) * np.prod(c[1], dtype=np.int64)) if _static(shape) else None
        if node.op_type == "Range" and all(x is not None for x in c[:3]):
            return max(0, int(np.ceil((float(c[1]) - float(c[0])) / float(c[2]))))
    except (TypeError, ValueError):
        return None
    return None


def _constant_value(node: Node) -> np.ndarray | None:
    for key, a in node.attrs.items():
        if key == "value":
            return numpy_helper.to_array(a.t)
        if key == "value_float":
            return np.array(a.f, np.float32)
        if key == "value_floats":
            return np.array(list(a.floats), np.float32)
        if key == "value_int":
            return np.array(a.i, np.int64)
        if key == "value_ints":
            return np.array(list(a.ints), np.int64)
    return None  # strings and sparse values stay as nodes


def _to_constant(graph: Graph, node: Node, arrays: list) -> None:
    """Replace a node by initializers under its output names (readers need no change)."""
    graph.remove_node(node)
    for out, arr in zip(node.outputs, arrays):
        if out and arr is not None:
            graph.set_constant(out, np.asarray(arr))


def _view(graph: Graph, node: Node) -> np.ndarray | None:
    x = graph.constant(node.inputs[0])
    op = node.op_type
    if op == "Flatten":
        axis = node.attr("axis", 1) % max(x.ndim, 1) if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op == "Reshape":
        shape = [int(d) for d in graph.constant(node.inputs[1])]
        if not node.attr("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return x.reshape(shape)
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = [int(a) for a in graph.constant(node.inputs[1])]
    if op == "Squeeze":
        return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
    if op == "Unsqueeze":
        out_rank = x.ndim + len(axes)
        return np.expand_dims(x, tuple(sorted(a % out_rank for a in axes)))
    return None


def _batches(graph: Graph, nodes: list[Node]):
    part, size = [], 0
    for n in nodes:
        part.append(n)
        size += sum(graph.constants[i].nbytes for i in n.inputs if i in graph.constants)
        if size > _BATCH_BYTES:
            yield part
            part, size = [], 0
    if part:
        yield part


def _subgraph_model(graph: Graph, nodes: list[Node], outputs: list[str], produced: set[str]) -> onnx.ModelProto:
    consts = list(dict.fromkeys(i for n in nodes for i in n.inputs if i and i not in produced))
    g = helper.make_graph(
        [_node_proto(n) for n in nodes], "fold", [],
        [helper.make_tensor_value_info(o, graph.type_of(o).dtype, None) for o in outputs],
        [graph.constants[c].to_proto() for c in consts])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in graph.opsets.items()])
    model.ir_version = min(graph.meta.ir_version or DEFAULT_IR_VERSION, 10)
    return model


def _run_ort(graph, nodes, outputs, produced) -> dict[str, np.ndarray] | None:
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        model = _subgraph_model(graph, nodes, outputs, produced)
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return dict(zip(outputs, sess.run(outputs, {})))
    except Exception:  # a kernel ORT lacks for some type: the reference evaluator tries node by node
        return None


def _run_reference(graph, nodes, outputs, produced) -> dict[str, np.ndarray]:
    """Node by node with ONNX's reference evaluator; a node that fails leaves its readers unfolded."""
    from onnx.reference import ReferenceEvaluator

    values: dict[str, np.ndarray] = {}
    for node in nodes:
        made = [i for i in node.inputs if i and i in produced]
        if any(i not in values for i in made):
            continue
        try:
            model = _subgraph_model(graph, [node], [o for o in node.outputs if o], set(made))
            model.graph.initializer.extend(numpy_helper.from_array(values[i], i) for i in made)
            values.update(zip([o for o in node.outputs if o], ReferenceEvaluator(model).run(None, {})))
        except Exception:
            continue
    return values


PASSES = [FoldConstants]
