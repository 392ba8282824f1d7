"""scatter-rows: ScatterND chains that overwrite every row become Concat + Gather."""

import numpy as np
import pytest

from tests.passes.fusion_helpers import check, ops, parse, rand

# torch's export of `out = empty_like(x); out[..., 0::2] = a; out[..., 1::2] = b` with the last axis
# moved first (Wan's rotary embedding), on a 6-row tensor; `odd` and `tail` pick which rows the second
# scatter writes.
INTERLEAVE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3, 4, 5] a, float[{k}, 4, 5] b) => (float[6, 4, 5] y) {{
    zero = Constant<value = float[6, 4, 5] {{{zeros}}}>()
    even = Constant<value = int64[3, 1] {{0, 2, 4}}>()
    odd = Constant<value = int64[{k}, 1] {{{rows}}}>()
    s1 = ScatterND(zero, even, a)
    s2 = ScatterND(s1, odd, b)
    y = Relu(s2)
}}
"""


def _model(rows: list[int]):
    return parse(INTERLEAVE.format(k=len(rows), rows=", ".join(map(str, rows)), zeros=", ".join(["0"] * 120)))


def test_interleaved_rows_become_concat_and_gather():
    model = _model([1, 3, -1])  # -1 is row 5
    graph, log = check(model, "fold-constants,scatter-rows,dce", {"a": rand(3, 4, 5), "b": rand(3, 4, 5, seed=1)})
    assert ops(graph) == ["Concat", "Gather", "Relu"]
    assert log["scatter-rows"].stats == {"ScatterND chains": 1}
    gather = graph.nodes_by_op("Gather")[0]
    assert graph.constant(gather.inputs[1]).tolist() == [0, 3, 1, 4, 2, 5]


def test_the_last_writer_of_a_row_wins():
    graph, _ = check(_model([1, 2, 3, 5]), "fold-constants,scatter-rows,dce", {"a": rand(3, 4, 5), "b": rand(4, 4, 5, seed=1)})
    assert ops(graph) == ["Concat", "Gather", "Relu"]


@pytest.mark.parametrize("rows", [[1, 3], [1, 3, 6]])
def test_rows_not_all_written_or_out_of_range_are_left_with_the_reason(rows):
    model = _model(rows)
    from vidcc import onnx_io
    from vidcc.pass_manager import PassContext, run_pipeline

    graph = onnx_io.from_proto(model)
    ctx = PassContext()
    run_pipeline(graph, "fold-constants,scatter-rows", ctx)
    assert ops(graph) == ["ScatterND", "ScatterND", "Relu"]
    assert "do not cover" in ctx.log[-1].details[0]["reason"]


def test_wan_rotary_embedding_has_no_scatter_after_cleanup():
    """Both Wan exports (dynamic and static dims) lose every ScatterND to cleanup, numerics unchanged."""
    pytest.importorskip("diffusers")
    from vidcc import onnx_io, zoo

    for static in (None, {"frames": 2, "height": 16, "width": 16}):
        exp = zoo.export("wan-dit:tiny", static=static)
        model = onnx_io.to_proto(onnx_io.load(exp.model_path))
        graph, log = check(model, "cleanup", dict(np.load(exp.inputs_path)))
        assert "ScatterND" not in graph.op_histogram() and log["scatter-rows"].stats == {"ScatterND chains": 4}


TRANSPOSED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4] a, float[2, 3, 4] b) => (float[2, 3, 8] y) {
    zero = Constant<value = float[8, 3, 2] {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}>()
    even = Constant<value = int64[4, 1] {0, 2, 4, 6}>()
    odd = Constant<value = int64[4, 1] {1, 3, 5, 7}>()
    at = Transpose<perm = [2, 1, 0]>(a)
    bt = Transpose<perm = [2, 1, 0]>(b)
    s1 = ScatterND(zero, even, at)
    s2 = ScatterND(s1, odd, bt)
    t = Transpose<perm = [2, 1, 0]>(s2)
    y = Relu(t)
}
"""


def test_transposed_updates_are_gathered_in_place_and_the_transposes_cancel():
    """`out[..., 0::2] = a` as torch exports it (last axis moved first and back): after scatter-rows and
    remove-noops the interleave is a Gather over the last axis and no Transpose is left."""
    graph, log = check(parse(TRANSPOSED), "fold-constants,scatter-rows,remove-noops,dce",
                       {"a": rand(2, 3, 4), "b": rand(2, 3, 4, seed=1)})
    assert ops(graph) == ["Concat", "Gather", "Relu"]
    assert [n.attr("axis") for n in graph.nodes_by_op("Concat") + graph.nodes_by_op("Gather")] == [2, 2]
