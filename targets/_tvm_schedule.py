"""Default CPU schedules for TVM Relax (dlight-style rules), so untuned builds are not naive loops.

TVM 0.27's llvm pipeline legalizes and fuses but schedules nothing: every fused function runs as the
single-threaded loop nest TOPI wrote, which made untuned TVM 20-28x slower than ONNX Runtime on the
tiny SVD UNet. dlight ships two CPU rules (GEMV with an inner reduction, and softmax/norm-like
Reduction); the time goes to matmuls and convolutions, which it leaves alone. So:

- `Contraction`: a function with one reduction block that multiplies-accumulates (matmul, batched
  matmul, conv1d/2d/3d NCHW) whose output's innermost axis is also the innermost axis of an operand.
  That axis is vectorized (1-2 SIMD registers wide), another output axis the vector operand does not
  depend on (rows of a matmul, output channels of a conv) is register-blocked by up to 4, the other
  output axes are fused into one parallel loop, and the reduction runs between them on a local
  accumulator tile (cache_write) that the fused epilogue (bias, residual, activation) reads once.
  Producers are inlined (padding keeps its own parallel loop).
- dlight's `cpu.GEMV` and `cpu.Reduction` next.
- `Fallback`: everything else (elementwise, layout, other reductions): inline what can be inlined, then
  per block fuse the spatial loops into one parallel loop, vectorizing the innermost chunk when the
  extent allows; reductions get their spatial loops parallel and an unrolled inner reduction.

A rule that fails on some function declines it (returns None) so the next rule, or in the end the
unscheduled function, takes over: a default schedule must never break a build.
"""

from __future__ import annotations

from tvm import DataType, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline

MIN_PARALLEL = 4096  # elements: below this a parallel launch costs more than it saves
MIN_PARALLEL_MACS = 1 << 17  # multiply-accumulates, the same for contractions


def _extent(sch, loop) -> int | None:
    e = sch.get(loop).extent
    return int(e) if isinstance(e, tirx.IntImm) else None


def _vars(expr) -> set:
    from tvm.tirx.analysis import undefined_vars

    return set(undefined_vars(expr))


class _CpuRule(ScheduleRule):
    def __init__(self, vector_bits: int = 256):
        self.vector_bits = vector_bits

    def is_target_available(self, target) -> bool:
        return target.kind.name == "llvm"

    def lanes(self, dtype_bits: int = 32) -> int:
        return max(self.vector_bits // dtype_bits, 2)

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self.schedule(func)
        except Exception:  # a rule that cannot handle this function declines it
            return None

    def schedule(self, func):
        raise NotImplementedError


class Contraction(_CpuRule):
    def schedule(self, func):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [b for b in infos if not b.is_injective()]
        if len(reductions) != 1 or "O" in reductions[0].dom_kind():
            return None
        main = reductions[0]
        pos = infos.index(main)
        for b in infos[:pos]:  # inline producers first: the operands' real access patterns show
            if not b.is_data_pad(sch):
                try:
                    sch.compute_inline(b.block_rv)
                except Exception:
                    pass  # keeps its own block; scheduled below
        block = sch.get(main.block_rv)
        if len(block.reads) < 2 or len(block.writes) != 1 or not block.writes[0].region:
            return None
        bits = DataType(str(block.writes[0].source.dtype)).bits
        lanes = self.lanes(bits)
        iters = main.iters
        bvars = [iv.var for iv in block.iter_vars]
        inner = block.writes[0].region[-1].min
        if not isinstance(inner, tirx.Var) or inner not in bvars:
            return None
        v = bvars.index(inner)
        if iters[v].kind != "S" or not isinstance(iters[v].dom, int):
            return None
        # operands indexed by the vector axis must use it in their last dim only (contiguous loads); an
        # operand that is a plain transpose (attention's K^T: [b, j, k] read with j the vector axis) is
        # copied once into [b, k, j] so it is
        copies = []
        for index, read in enumerate(block.reads):
            uses = [d for d, rg in enumerate(read.region) if inner in _vars(rg.min)]
            if not uses or uses == [len(read.region) - 1]:
                continue
            if len(uses) != 1 or not all(isinstance(rg.min, tirx.Var) and int(rg.extent) == 1 for rg in read.region):
                return None
            copies.append((index, uses[0]))
        for index, d in copies:
            copy = sch.cache_read(main.block_rv, index, "global")
            sch.transform_layout(copy, ("write", 0), lambda *i, d=d: (*i[:d], *i[d + 1:], i[d]))
            _parallel_vectorize(sch, copy, lanes)
        block = sch.get(main.block_rv)
        vector_reads = [r for r in block.reads if any(inner in _vars(rg.min) for rg in r.region)]
        if not vector_reads:
            return None
        vector_deps = set().union(*(_vars(rg.min) for r in vector_reads for rg in r.region))
        spatial = [i for i, it in enumerate(iters) if it.kind == "S"]
        reduce = [i for i, it in enumerate(iters) if it.kind == "R"]
        u = next((i for i in reversed(spatial) if i != v and bvars[i] not in vector_deps
                  and isinstance(iters[i].dom, int) and iters[i].dom >= 2), None)
        vi = next((c for c in (2 * lanes, lanes, lanes // 2, 4, 2) if c >= 2 and iters[v].dom % c == 0), None)
        if vi is None:
            return None

        epilogue = infos[pos + 1:]
        for b in epilogue[:-1]:
            sch.compute_inline(b.block_rv)

        loops = [it.loop_rv for it in iters]
        v_out, v_in = sch.split(loops[v], factors=[None, vi])
        u_out = u_in = None
        if u is not None:
            regs = max(vi // lanes, 1)
            ru = next(c for c in (4, 3, 2, 1) if iters[u].dom % c == 0 and c * regs <= 12)
            if ru > 1:
                u_out, u_in = sch.split(loops[u], factors=[None, ru])
        outer = [loops[i] for i in spatial if i not in (v, u if u_in is not None else -1)]
        outer += ([u_out] if u_out is not None else []) + [v_out]
        sch.reorder(*outer, *[loops[i] for i in reduce], *([u_in] if u_in is not None else []), v_in)
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        work = 1
        for it in iters:
            work *= it.dom if isinstance(it.dom, int) else 1 << 20
        if work >= MIN_PARALLEL_MACS:  # a parallel launch costs ~10 us: worth it only for real work
            sch.parallel(fused)
        # accumulate in a local tile; the epilogue reads it once, fused into the write-back
        local = sch.cache_write(main.block_rv, 0, "local")
        sch.reverse_compute_at(local, fused)
        if epilogue:
            try:
                sch.reverse_compute_inline(epilogue[-1].block_rv)
            except Exception:
                sch.reverse_compute_at(epilogue[-1].block_rv, fused)
                _vectorize_inner(sch, epilogue[-1].block_rv, lanes)
        _vectorize_inner(sch, local, lanes)
        if u_in is not None:
            sch.unroll(u_in)
        sch.vectorize(v_in)
        # vectorize before decompose: the init block inherits the loop kinds
        sch.decompose_reduction(main.block_rv, loops[reduce[0]])
        for b in infos[:pos]:
            try:
                _parallel_vectorize(sch, b.block_rv, lanes)
            except Exception:
                pass  # inlined
        return sch


class RowReduction(_CpuRule):
    """softmax / layer norm / group norm: row statistics (reductions) then an elementwise tail, all
    sharing leading row axes. One parallel pass per row: injective producers are inlined (exp is
    recomputed rather than stored: it is cheap once vectorized, and per-row scratch buffers would be
    heap workspaces), each reduction is rfactor-ed over SIMD lanes so it runs on vectors, and every block
    is computed at the row loop so a row stays in cache. dlight's cpu.Reduction keeps scalar
    reductions and per-row scratch buffers; this measured 3-8x faster on softmax rows of 256."""

    def schedule(self, func):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or not infos[-1].is_injective():
            return None
        if all(b.is_injective() for b in infos) or any("O" in b.dom_kind() for b in infos):
            return None
        rows = min(len(k) - len(k.lstrip("S")) for k in (b.dom_kind() for b in infos))
        if rows == 0:
            return None
        last = infos[-1]
        for b in infos[:-1]:
            if b.is_injective():
                try:
                    sch.compute_inline(b.block_rv)
                except Exception:
                    pass
        lanes = self.lanes()
        blocks = [sch.get_sblock(sch.get(b.block_rv).name_hint) for b in infos[:-1]
                  if not b.is_injective()]
        rf_blocks = []
        for blk in blocks:
            loops = sch.get_loops(blk)
            kinds = _dom_kinds(sch, blk)
            if len(loops) != len(kinds) or kinds[:rows] != "S" * rows or "S" in kinds[rows:]:
                return None
            red = loops[rows:]
            r = sch.fuse(*red) if len(red) > 1 else red[0]
            ext = _extent(sch, r)
            if ext is not None and ext % lanes == 0 and ext >= 2 * lanes:
                _, ri = sch.split(r, factors=[None, lanes])
                rf = sch.rfactor(ri, factor_axis=rows)
                rf_blocks.append(rf)
        loops = sch.get_loops(last.block_rv)
        size = 1
        for loop in loops:
            size *= _extent(sch, loop) or MIN_PARALLEL
        row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
        if size >= MIN_PARALLEL:
            sch.parallel(row)
        _vectorize_inner(sch, last.block_rv, lanes)
        for blk in reversed([b for blk in blocks for b in _with_rf(blk, rf_blocks, sch)]):
            sch.compute_at(blk, row, preserve_unit_loops=True)
        for rf in rf_blocks:
            # compute_at regenerated its loops as [row, lanes, unit rows..., ro]: lanes go innermost
            lp = sch.get_loops(rf)
            sch.reorder(lp[-1], lp[1])
            lp = sch.get_loops(rf)
            sch.vectorize(lp[-1])
            sch.decompose_reduction(rf, lp[1])
        return sch


def _with_rf(blk, rf_blocks, sch):
    """A reduction block preceded by its rfactor block (if it has one), in execution order."""
    name = sch.get(blk).name_hint
    return [rf for rf in rf_blocks if sch.get(rf).name_hint.startswith(name)] + [blk]


def _dom_kinds(sch, blk) -> str:
    return "".join({0: "S", 2: "R"}.get(int(iv.iter_type), "O") for iv in sch.get(blk).iter_vars)


def _vectorize_inner(sch, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    ext = _extent(sch, loops[-1]) if loops else None
    if ext is None or ext < 2:
        return
    if ext <= 2 * lanes:
        sch.vectorize(loops[-1])
    elif ext % lanes == 0:
        sch.vectorize(sch.split(loops[-1], factors=[None, lanes])[1])


def _parallel_vectorize(sch, block, lanes: int) -> None:
    """Fuse a spatial block's loops into one parallel loop with a vectorized innermost chunk."""
    loops = sch.get_loops(block)
    extents = [_extent(sch, loop) for loop in loops]
    if not loops or any(e is None for e in extents):
        return
    total = 1
    for e in extents:
        total *= e
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if extents[-1] % lanes == 0 and total >= lanes:
        outer, inner = sch.split(fused, factors=[None, lanes])
        sch.vectorize(inner)
        if total >= MIN_PARALLEL:
            sch.parallel(outer)
    elif total >= MIN_PARALLEL:
        sch.parallel(fused)


class Fallback(_CpuRule):
    def schedule(self, func):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        lanes = self.lanes()
        for b in infos:
            kinds = b.dom_kind()
            loops = sch.get_loops(b.block_rv)
            if "O" in kinds or len(loops) != len(kinds) or not loops:
                continue
            if b.is_injective():
                _parallel_vectorize(sch, b.block_rv, lanes)
                continue
            spatial = [loop for loop, k in zip(loops, kinds) if k == "S"]
            reduce = [loop for loop, k in zip(loops, kinds) if k == "R"]
            sch.reorder(*spatial, *reduce)
            if spatial:
                fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
                if (_extent(sch, fused) or 0) >= 2:
                    sch.parallel(fused)
            sch.annotate(reduce[-1], "pragma_auto_unroll_max_step", 16)
            sch.annotate(reduce[-1], "pragma_unroll_explicit", 1)
        return sch


def cpu_rules(vector_bits: int) -> list:
    return [Contraction(vector_bits), dl.cpu.GEMV(), RowReduction(vector_bits), dl.cpu.Reduction(), Fallback(vector_bits)]


def gpu_rules() -> list:
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
