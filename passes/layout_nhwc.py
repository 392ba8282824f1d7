"""Channels-last layout for targets with NHWC kernels (ONNX Runtime's CUDA EP)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from vidcc.ir import Graph, Node, TensorType
from vidcc.pass_manager import Pass, PassContext, PassResult
from vidcc.rewrite import Match, Rule, apply_rules, emit, ensure_opset, remove_dead

from ._fusion import MS, accepts, static
from .fusion_norm import _group_params, _groupnorm_rules
from .remove_noops import simplify_node

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _permuted(t: TensorType, perm: list[int]) -> TensorType:
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm) if t.shape is not None else None)


def _transpose(g: Graph, x: str, perm: list[int], like: Node, suffix: str) -> str:
    t = _permuted(g.type_of(x), perm)
    return emit(g, "Transpose", [x], like=like, suffix=suffix, attrs={"perm": perm}, types=[t]).outputs[0]


@dataclass(frozen=True)
class LayoutNHWC(Pass):
    """Run 2-D convolutions and GroupNorms channels-last where the target has NHWC kernels.

    Rewrite cases (targets that accept com.microsoft NhwcConv and GroupNorm: ORT's CUDA EP):
    - Conv over a 4-D input with a constant weight -> Transpose(0,2,3,1) -> NhwcConv (weight as
      [M, kH, kW, C/group]) -> Transpose(0,3,1,2) (run temporal-conv-2d{force=true} first: SVD's
      (k,1,1) Conv3d become 2-D Convs over [N, C, F, H*W]);
    - GroupNorm in any form fuse-groupnorm recognises (input of rank >= 3; ranks other than 4 are
      viewed as [N, C, S, 1]) -> Transpose -> com.microsoft GroupNorm (fp32 gamma/beta; the kernel
      keeps its statistics in fp32) -> Transpose back; a SiLU (QuickGelu alpha=1) that alone reads it
      runs inside the kernel (activation=1);
    then a Transpose that undoes the Transpose before it goes, and ONNX Runtime's transpose optimizer
    sinks the rest through the element-wise ops between convolutions and norms.
    Why: cuDNN's fp16 tensor-core convolutions work channels-last; on NCHW tensors each one pays
    for layout transforms, and the GroupNorm kernel with its fused SiLU replaces four passes over
    the activation (Reshape-InstanceNormalization-Reshape-Mul-Add, SiLU).
    """

    name = "layout-nhwc"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        missing = [op for op in ("NhwcConv", "GroupNorm") if not accepts(ctx, op, MS)]
        if missing:
            return PassResult(False, {"skipped": f"target has no com.microsoft {', '.join(missing)}"})
        gn = apply_rules(graph, _groupnorm_to_nhwc(), ctx)
        silu = sum(_fold_silu(graph, n) for n in graph.nodes_by_op("GroupNorm", MS))
        convs, details = _convs_to_nhwc(graph)
        cancelled = _tidy(graph)
        stats = {**gn.stats(), "GroupNorm+SiLU": silu, **convs, "Transpose pairs cancelled": cancelled}
        modified = gn.modified or any(k.startswith("NhwcConv") for k in convs) or bool(cancelled)
        return PassResult(modified, stats, gn.details + details)


def _shape_of(g: Graph, x: str, like: Node) -> str:
    rank = len(g.type_of(x).shape)
    return emit(g, "Shape", [x], like=like, types=[TensorType(TensorProto.INT64, (rank,))]).outputs[0]


def _groupnorm_to_nhwc() -> list[Rule]:
    def check(m: Match, g: Graph, c) -> str | None:
        params = _group_params(m, g)
        if isinstance(params, str):
            return params
        per_group = params[0] // params[1]
        # the CUDA kernel's limits (ORT 1.31 group_norm_impl: two channels per thread, <= 512 per block)
        if per_group % 2 or per_group > 512:
            return f"{per_group} channels per group: ORT's CUDA GroupNorm needs an even count <= 512"
        return None

    def rewrite(m: Match, g: Graph, c):
        C, G, eps, scale, bias = _group_params(m, g)
        anchor = m.node("inorm") if "inorm" in m else m.node("var")
        x = m["x"]
        xs = g.type_of(x).shape
        stem = anchor.name or "groupnorm"
        # the kernel takes [N, H, W, C] and normalizes over H*W: other ranks are viewed as 4-D, a 5-D
        # [N, C, F, H, W] as [N, C, F, H*W] like the temporal convolutions around it (temporal-conv-2d)
        view = (xs if len(xs) == 4 else (*xs[:3], xs[3] * xs[4]) if len(xs) == 5 and static(xs[3:]) else
                (xs[0], C, int(np.prod(xs[2:])) if static(xs[2:]) else -1, 1))
        four = x if len(xs) == 4 else _reshape(g, x, view, anchor, "as4d")
        gamma = g.add_constant(scale.astype(np.float32), f"{stem}.gamma")
        beta = g.add_constant(bias.astype(np.float32), f"{stem}.beta")
        nhwc = _transpose(g, four, TO_NHWC, anchor, "to_nhwc")
        node = emit(g, "GroupNorm", [nhwc, gamma, beta], like=anchor, domain=MS, suffix="GroupNorm",
                    attrs={"groups": G, "epsilon": eps, "activation": 0, "channels_last": 1},
                    types=[g.type_of(nhwc)])
        ensure_opset(g, MS, 1)
        out = _transpose(g, node.outputs[0], TO_NCHW, anchor, "to_nchw")
        if len(xs) != 4:
            out = _reshape(g, out, xs, anchor, "back") if view != (xs[0], C, -1, 1) else \
                emit(g, "Reshape", [out, _shape_of(g, x, anchor)], like=anchor, suffix="back", types=[g.type_of(x)]).outputs[0]
        return [out]

    return [Rule(r.name, r.pattern, rewrite, check, r.anchor, r.form) for r in _groupnorm_rules(None)]


def _fold_silu(g: Graph, gn: Node) -> int:
    """GroupNorm -> Transpose [-> Reshape] -> QuickGelu(alpha=1) read by nothing else: SiLU in the kernel."""
    if gn.attr("activation", 0):
        return 0
    t = gn.outputs[0]
    for op in ("Transpose", "Reshape"):
        users = g.consumer_nodes(t)
        if len(users) == 1 and users[0].op_type == op and users[0].inputs[0] == t:
            t = users[0].outputs[0]
    users = g.consumer_nodes(t)
    if t == gn.outputs[0] or len(users) != 1 or t in g.outputs:
        return 0
    silu = users[0]
    if (silu.op_type, silu.domain) != ("QuickGelu", MS) or silu.attr("alpha", 1.702) != 1.0 \
            or silu.outputs[0] in g.outputs:
        return 0
    g.set_attr(gn, "activation", 1)
    g.replace_all_uses(silu.outputs[0], t)
    g.remove_node(silu)
    return 1


def _reshape(g: Graph, x: str, shape, like: Node, suffix: str) -> str:
    """Reshape to `shape`: -1 is inferred; a dim that is not static (None) must be x's own at that
    position (0: copy it)."""
    c = g.add_constant(np.array([d if isinstance(d, int) else 0 for d in shape], np.int64),
                       f"{like.name or like.op_type}.{suffix}")
    out = TensorType(g.type_of(x).dtype, tuple(None if d == -1 else d for d in shape))
    return emit(g, "Reshape", [x, c], like=like, suffix=suffix, types=[out]).outputs[0]


def _convs_to_nhwc(g: Graph) -> tuple[dict, list[dict]]:
    done, details = 0, []
    convs = [n for n in g.nodes_by_op("Conv") if n.domain in ("", "ai.onnx")]
    for conv in convs:
        xs, w = g.type_of(conv.inputs[0]).shape, g.constant(conv.inputs[1])
        why = ("weight is not a constant" if w is None else
               None if xs is not None and len(xs) == 4 else
               f"input of rank {len(xs) if xs is not None else '?'} (temporal-conv-2d turns (k,1,1) Conv3d into 2-D ones)")
        if why:
            details.append({"kind": "refused", "pattern": "NhwcConv", "node": conv.name or conv.outputs[0], "reason": why})
            continue
        x = _transpose(g, conv.inputs[0], TO_NHWC, conv, "to_nhwc")
        weight = g.add_constant(np.ascontiguousarray(w.transpose(TO_NHWC)), f"{conv.name or 'conv'}.weight_nhwc")
        # kernel_shape always: without it ORT's NhwcConv shape inference reads the kernel from the weight's
        # NCHW axes and infers a negative width (a hand-built Conv without the attribute failed on the GPU)
        attrs = {"kernel_shape": [int(d) for d in w.shape[2:]], **conv.attrs}
        node = emit(g, "NhwcConv", [x, weight, *conv.inputs[2:]], like=conv, domain=MS, suffix="NhwcConv",
                    attrs=attrs, types=[_permuted(g.type_of(conv.outputs[0]), TO_NHWC)])
        ensure_opset(g, MS, 1)
        g.replace_all_uses(conv.outputs[0], _transpose(g, node.outputs[0], TO_NCHW, conv, "to_nchw"))
        remove_dead(g, [conv])
        done += 1
    return ({"NhwcConv": f"{done}/{len(convs)}"} if convs else {}), details


def _tidy(g: Graph) -> int:
    """Collapse what the layout change put back to back: Reshape chains, Reshapes to the input's own
    shape (remove-noops' rules), and a Transpose undoing the one before it, also when that one has
    other readers (it then stays for them). Returns the number of Transpose pairs cancelled."""
    cancelled, changed = 0, True
    while changed:
        changed = False
        for node in g.toposort():
            if node.id not in g.nx or node.op_type not in ("Reshape", "Transpose"):
                continue
            if simplify_node(g, node):
                changed = True
                continue
            inner = g.producer(node.inputs[0])
            if node.op_type != "Transpose" or inner is None or inner.op_type != "Transpose" or node.outputs[0] in g.outputs:
                continue
            p, q = inner.attr("perm"), node.attr("perm")
            if p is not None and q is not None and [p[i] for i in q] == list(range(len(q))):
                g.replace_all_uses(node.outputs[0], inner.inputs[0])
                remove_dead(g, [node, inner])
                cancelled += 1
                changed = True
    return cancelled


PASSES = [LayoutNHWC]
