"""ONNX <-> IR. Lossless: everything the IR does not model rides along in `Graph.meta`.

load() never reads external data (it is memory-mapped on first use); save() streams unchanged
external tensors from their mapping, writes to temporary files and renames them into place, so an
interrupted save leaves no half-written model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import google.protobuf.message
import onnx
from onnx import TensorProto, ValueInfoProto, helper

from vidcc.errors import ModelError
from vidcc.ir.graph import Graph
from vidcc.ir.tensor import Constant, TensorType

EXTERNAL_THRESHOLD = 1024  # bytes: smaller constants stay embedded when saving with external data
PROTO_LIMIT = 1_900_000_000  # protobuf's 2 GB ceiling, with room for the graph itself
DEFAULT_IR_VERSION = 10  # for graphs built from scratch: accepted by every onnxruntime we target


def load(path: str | os.PathLike, *, infer_types: bool = True) -> Graph:
    """Read an ONNX file into the IR. Errors are one line naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file '{path}' not found")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"'{path}' is not a readable ONNX model (truncated or not protobuf): {exc}") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelError(f"'{path}' holds no ONNX graph")
    graph = from_proto(model, path.parent, infer_types=False)
    from vidcc.ir.verify import problems

    broken = problems(graph, require_types=False, first_only=True)
    if broken:
        raise ModelError(f"'{path.name}': {broken[0]}")
    check_model(to_proto(graph, weights=False), path.name)  # re-emitted: sorted, weights left out
    if infer_types:
        infer_missing_types(graph)
    return graph


# Domains some runtime vidcc targets can execute, besides those a model defines as local functions.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft", "com.microsoft.nchwc",
                 "com.microsoft.experimental", "org.pytorch.aten", "trt", "trt.plugins"}


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Reject what no target could run: unknown ops, undeclared or unknown domains, too-new opsets."""
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > newest:
            raise ModelError(f"'{what}': default-domain opset {o.version} is newer than this onnx supports ({newest})")
    known = KNOWN_DOMAINS | {f.domain for f in model.functions}
    for node in _all_nodes(model.graph):
        if node.domain not in known:
            label = node.name or node.op_type
            raise ModelError(f"'{what}': node {label} ({node.op_type}) uses unknown domain '{node.domain}'")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        context = next((ln.split("Context:", 1)[1].strip() for ln in lines if "Context:" in ln), "")
        raise ModelError(f"'{what}': {lines[0]}" + (f" ({context})" if context else "")) from None


def _all_nodes(g: onnx.GraphProto):
    for node in g.node:
        yield node
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_nodes(sub)


def from_proto(model: onnx.ModelProto, base_dir: str | os.PathLike = ".", *, infer_types: bool = True) -> Graph:
    base_dir = Path(base_dir)
    g = model.graph
    if g.sparse_initializer:
        raise ModelError("sparse initializers are not supported; densify them first")
    graph = Graph(g.name)
    graph.doc_string = g.doc_string
    graph.opsets = {o.domain: o.version for o in model.opset_import}
    graph.meta = _shell(model)

    for t in g.initializer:
        if t.name in graph.constants:
            raise ModelError(f"initializer '{t.name}' is defined twice")
        graph.constants[t.name] = Constant.from_proto(t, base_dir)
    for vi in g.input:
        graph.io_meta[vi.name] = vi
        graph.inputs.append(vi.name)
        graph.types[vi.name] = _type_of(vi)
    for vi in g.output:
        graph.io_meta.setdefault(vi.name, vi)
        graph.outputs.append(vi.name)
        if vi.type.HasField("tensor_type"):
            graph.types[vi.name] = _type_of(vi)
    for vi in g.value_info:
        graph.types.setdefault(vi.name, _type_of(vi))

    from vidcc.errors import VerifyError

    for proto in g.node:
        try:
            node = graph.add_node(
                proto.op_type, list(proto.input), list(proto.output), name=proto.name, domain=proto.domain,
                attrs={a.name: a for a in proto.attribute}, doc_string=proto.doc_string,
                metadata={m.key: m.value for m in proto.metadata_props})
        except VerifyError as exc:
            raise ModelError(str(exc)) from None
        if "vidcc.precision" in node.metadata:
            node.precision = node.metadata.pop("vidcc.precision")
    if infer_types:
        infer_missing_types(graph)
    return graph


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """Everything of the model but its graph and opsets, without copying the weights."""
    shell = onnx.ModelProto()
    for fd, value in model.ListFields():
        if fd.name in ("graph", "opset_import"):
            continue
        if fd.is_repeated:
            getattr(shell, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(shell, fd.name).CopyFrom(value)
        else:
            setattr(shell, fd.name, value)
    return shell


def _type_of(vi: ValueInfoProto) -> TensorType:
    if not vi.type.HasField("tensor_type"):
        return TensorType()
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return TensorType(tt.elem_type, None)
    dims = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return TensorType(tt.elem_type, tuple(dims))


def infer_missing_types(graph: Graph, *, data_prop: bool = False) -> int:
    """Fill unknown tensor types with ONNX shape inference; returns how many were filled.

    Large float constants become typed graph inputs of the probe model, so inference never
    serialises the weights."""
    probe = to_proto(graph, weights=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False, data_prop=data_prop)
    except Exception:  # inference is a best effort; verify() reports what stays unknown
        return 0
    filled = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = _type_of(vi)
        if not t.dtype:
            continue
        if t.shape is not None and any(isinstance(d, str) and d.startswith("unk__") for d in t.shape):
            # onnx names unknown dims unk__N afresh on each run; kept, they could equal an unrelated dim
            # of the same name from an export or an earlier run, and ORT plans buffers by dim names
            t = TensorType(t.dtype, tuple(None if isinstance(d, str) and d.startswith("unk__") else d for d in t.shape))
        old = graph.types.get(vi.name)
        if old is None or not old.dtype or (old.shape is None and t.shape is not None):
            graph.types[vi.name] = t
            filled += 1
    return filled


def _value_info(name: str, t: TensorType) -> ValueInfoProto:
    shape = None if t.shape is None else [d if isinstance(d, (int, str)) else None for d in t.shape]
    return helper.make_tensor_value_info(name, t.dtype, shape)


def _node_proto(node) -> onnx.NodeProto:
    p = onnx.NodeProto(op_type=node.op_type, domain=node.domain, name=node.name, doc_string=node.doc_string)
    p.input.extend(node.inputs)
    p.output.extend(node.outputs)
    p.attribute.extend(node.attrs.values())
    meta = dict(node.metadata)
    if node.precision:
        meta["vidcc.precision"] = node.precision
    for k, v in meta.items():
        p.metadata_props.add(key=k, value=v)
    return p


def to_proto(graph: Graph, *, weights: bool = True, external: dict[str, tuple[str, int, int]] | None = None) -> onnx.ModelProto:
    """The graph as a ModelProto. weights=False: large float constants become typed graph inputs
    (for shape inference and other structure-only uses). `external` maps constant -> (file, offset,
    length) for constants that save() writes to an external data file."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.meta)
    if not model.ir_version:
        model.ir_version = DEFAULT_IR_VERSION
    for domain, version in graph.opsets.items():
        model.opset_import.add(domain=domain, version=version)
    g = model.graph
    g.name = graph.name
    g.doc_string = graph.doc_string
    for name in graph.inputs:
        g.input.append(graph.io_meta.get(name) or _value_info(name, graph.type_of(name)))
    order = graph.toposort()
    g.node.extend(_node_proto(n) for n in order)
    for name in graph.outputs:
        vi = graph.io_meta.get(name)
        t = graph.type_of(name)
        if vi is None or (not vi.type.tensor_type.elem_type and t.dtype):
            vi = _value_info(name, t)
        g.output.append(vi)
    io = set(graph.inputs) | set(graph.outputs)
    for n in order:
        for out in n.outputs:
            t = graph.types.get(out)
            if out and out not in io and t is not None and t.dtype:
                g.value_info.append(_value_info(out, t))
    for name, c in graph.constants.items():
        if not weights and not _is_shape_data(c):
            if name not in graph.inputs:
                g.input.append(_value_info(name, c.type))
            continue
        if external and name in external:
            location, offset, length = external[name]
            t = c.header_proto()
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=k, value=v)
            g.initializer.append(t)
        else:
            g.initializer.append(c.to_proto())
    return model


def _is_shape_data(c: Constant) -> bool:
    # Integer and small constants carry shapes and axes; inference needs their values.
    return c.size <= 64 or c.dtype in (TensorProto.INT64, TensorProto.INT32)


def save(graph: Graph, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Write the graph atomically. External data (file `<name>.data` beside the model) is used when
    asked, when the input had it, or when the weights exceed protobuf's 2 GB limit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(c.nbytes for c in graph.constants.values())
    if external_data is None:
        external_data = total > PROTO_LIMIT or any(c.is_external for c in graph.constants.values())
    data_name = path.name + ".data"
    tmp_files: list[Path] = []
    try:
        external = None
        if external_data:
            external = {}
            fd, tmp = tempfile.mkstemp(prefix=f".{data_name}.", dir=path.parent)
            tmp_files.append(Path(tmp))
            with os.fdopen(fd, "wb") as f:
                offset = 0
                for name, c in graph.constants.items():
                    if c.nbytes < EXTERNAL_THRESHOLD:
                        continue
                    pad = (-offset) % 64  # aligned, so the next load can map tensors directly
                    f.write(b"\0" * pad)
                    offset += pad
                    for piece in c.raw_chunks():
                        f.write(piece)
                    external[name] = (data_name, offset, c.nbytes)
                    offset += c.nbytes
        model = to_proto(graph, external=external)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        tmp_files.append(Path(tmp))
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString(deterministic=True))
        if external_data:
            os.replace(tmp_files[0], path.parent / data_name)
        os.replace(tmp_files[-1], path)
        tmp_files.clear()
    finally:
        for t in tmp_files:
            t.unlink(missing_ok=True)
    return path

