"""Numerical verification against the reference: the ORIGINAL graph on ONNX Runtime CPU in fp32.

Metrics per output (all computed in float64):

- `max_abs`      max |out - ref|
- `max_rel`      max |out - ref| / max |ref|: the error relative to the output's scale. This is the
                 gated relative error; it does not explode where ref crosses zero.
- `max_rel_elem` max over elements of |out - ref| / (|ref| + eps), eps = 1e-3 * max |ref|: the worst
                 element relative to its own magnitude, with eps keeping elements far below the
                 output's scale from dominating. Reported, not gated.
- `cosine`       cosine similarity of the flattened tensors (1.0 when both are all zero)
- `psnr_db`      20 log10(range / rmse), range = max(ref) - min(ref) (inf when identical)
- `nan`, `inf`   counts in the output (`ref_nan`, `ref_inf` for the reference)

Gates by kind of change (DESIGN.md §8): exact (cleanup, fusion, folding) max_rel <= 1e-4 and cosine
>= 0.99999; fp16 cosine >= 0.999; bf16 cosine >= 0.995; lossy (pruning) is reported and passes unless
the user asks for a gate. Every gate fails on a missing output, a shape mismatch, or NaN/Inf where the
reference is finite. `vidcc compare` reuses `compare_outputs` and `judge`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np


@dataclass(frozen=True)
class Gate:
    kind: str
    max_rel: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = ([f"rel <= {self.max_rel:g}"] if self.max_rel is not None else []) + \
                ([f"cosine >= {self.min_cosine:g}"] if self.min_cosine is not None else [])
        return f"{self.kind} ({', '.join(parts) or 'reported only'})"


GATES = {
    "exact": Gate("exact", max_rel=1e-4, min_cosine=0.99999),
    "fp16": Gate("fp16", min_cosine=0.999),
    "bf16": Gate("bf16", min_cosine=0.995),
    "lossy": Gate("lossy"),
}


@dataclass
class OutputMetrics:
    name: str
    shape: list[int] = field(default_factory=list)
    ref_shape: list[int] = field(default_factory=list)
    dtype: str = ""
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_rel_elem: float = 0.0
    cosine: float = 1.0
    psnr_db: float = math.inf
    nan: int = 0
    inf: int = 0
    ref_nan: int = 0
    ref_inf: int = 0
    error: str | None = None  # missing output, shape mismatch

    def to_json(self) -> dict[str, Any]:
        # JSON has no inf/nan: write them as strings a person can read
        return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class Verdict:
    passed: bool
    gate: Gate
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "gate": self.gate.kind, "rule": self.gate.describe(), "failures": self.failures}


def metrics(name: str, out: np.ndarray, ref: np.ndarray) -> OutputMetrics:
    out, ref = np.asarray(out), np.asarray(ref)
    m = OutputMetrics(name, list(out.shape), list(ref.shape), str(out.dtype))
    if out.shape != ref.shape:
        m.error = f"shape {list(out.shape)} != reference {list(ref.shape)}"
        return m
    if out.dtype.kind not in "fc" or ref.dtype.kind not in "fc":  # ints, bools: exact equality
        diff = int(np.count_nonzero(out != ref))
        m.max_abs = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max()) if out.size else 0.0
        m.max_rel = m.max_rel_elem = 0.0 if diff == 0 else math.inf
        m.cosine = 1.0 if diff == 0 else 0.0
        return m
    a, r = out.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    m.nan, m.inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    m.ref_nan, m.ref_inf = int(np.isnan(r).sum()), int(np.isinf(r).sum())
    ok = np.isfinite(a) & np.isfinite(r)  # compare where both are finite; NaN/Inf are counted above
    a, r = a[ok], r[ok]
    if a.size == 0:
        return m
    diff = np.abs(a - r)
    scale = float(np.abs(r).max())
    m.max_abs = float(diff.max())
    m.max_rel = (m.max_abs / scale) if scale > 0 else (0.0 if m.max_abs == 0 else math.inf)
    eps = 1e-3 * scale if scale > 0 else 1e-30
    m.max_rel_elem = float((diff / (np.abs(r) + eps)).max())
    na, nr = float(np.linalg.norm(a)), float(np.linalg.norm(r))
    m.cosine = 1.0 if na == 0 and nr == 0 else (0.0 if na == 0 or nr == 0 else float(np.dot(a, r) / (na * nr)))
    rmse = float(np.sqrt(np.mean((a - r) ** 2)))
    span = float(r.max() - r.min()) or scale or 1.0
    m.psnr_db = math.inf if rmse == 0 else 20 * math.log10(span / rmse)
    return m


def compare_outputs(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, OutputMetrics]:
    """Metrics for every reference output; an output the candidate lacks is an error entry."""
    result = {}
    for name, ref in reference.items():
        if name not in outputs:
            result[name] = OutputMetrics(name, ref_shape=list(np.shape(ref)), error="output missing")
        else:
            result[name] = metrics(name, outputs[name], ref)
    return result


def judge(per_output: dict[str, OutputMetrics], gate: Gate | str) -> Verdict:
    gate = GATES[gate] if isinstance(gate, str) else gate
    failures = []
    for name, m in per_output.items():
        if m.error:
            failures.append(f"{name}: {m.error}")
            continue
        if m.nan > m.ref_nan or m.inf > m.ref_inf:
            failures.append(f"{name}: {m.nan} NaN / {m.inf} Inf (reference has {m.ref_nan} / {m.ref_inf})")
        if gate.max_rel is not None and not m.max_rel <= gate.max_rel:
            failures.append(f"{name}: max rel error {m.max_rel:.3g} > {gate.max_rel:g}")
        if gate.min_cosine is not None and not m.cosine >= gate.min_cosine:
            failures.append(f"{name}: cosine {m.cosine:.6f} < {gate.min_cosine:g}")
    return Verdict(not failures, gate, failures)


def gate_for(target_precision: str = "fp32", pass_log: Iterable = (), requested: str | None = None) -> Gate:
    """Which gate applies: the user's choice, else the target's compute precision, else the lossiest
    pass in the log (a precision pass -> its dtype; any other lossy pass -> report only)."""
    if requested:
        if requested not in GATES:
            from vidcc.errors import VidccError

            raise VidccError(f"unknown gate '{requested}' (choose from {', '.join(GATES)})")
        return GATES[requested]
    if target_precision in ("fp16", "bf16"):
        return GATES[target_precision]
    kind = "exact"
    for record in pass_log:
        if not getattr(record, "lossy", False) or getattr(record, "error", None):
            continue
        spec = getattr(record, "spec", "") or ""
        if "bf16" in spec:
            kind = "bf16"
        elif "fp16" in spec or "precision" in record.name:
            kind = "bf16" if kind == "bf16" else "fp16"
        elif kind == "exact":
            kind = "lossy"
    return GATES[kind]


# ---- inputs and the reference run --------------------------------------------------------------

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
       10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
# the same element types as ONNX Runtime names them (NodeArg.type)
ORT_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
          "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def symbolic_dims(signature: dict[str, dict[str, Any]], feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """{dim name: size} of every named dimension of the inputs at these feeds' shapes; a name that
    takes two sizes is an error (the feeds disagree with the model)."""
    from vidcc.errors import VidccError

    dims: dict[str, int] = {}
    for name, info in signature.items():
        if name not in feeds or not info["shape"]:
            continue
        for d, size in zip(info["shape"], np.shape(feeds[name])):
            if isinstance(d, str):
                if dims.setdefault(d, int(size)) != size:
                    raise VidccError(f"input '{name}': dimension '{d}' is {size} here but {dims[d]} in another input")
    return dims


def input_signature(model_path: str | Path) -> dict[str, dict[str, Any]]:
    """{name: {"dtype": numpy dtype name, "shape": [int | str | None]}} of a model's real inputs."""
    import onnx

    model = onnx.load_model(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    sig = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim] \
            if tt.HasField("shape") else None
        dtype = _NP.get(tt.elem_type)
        sig[vi.name] = {"dtype": np.dtype(dtype).name if dtype else f"onnx:{tt.elem_type}", "shape": dims}
    return sig


def random_feeds(signature: dict[str, dict[str, Any]], *, dims: dict[str, int] | None = None, seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """Inputs for a model without sample inputs: floats ~ N(0, 1), integers 0, bools False (seeded).
    A symbolic or unknown dim takes its value from `dims` (by dim name), else 1."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for name, s in signature.items():
        if s["dtype"].startswith("onnx:"):
            from vidcc.errors import VidccError

            raise VidccError(f"input '{name}' has an element type vidcc cannot generate ({s['dtype']}); pass --inputs")
        shape = [d if isinstance(d, int) and d > 0 else dims.get(d, 1) if isinstance(d, str) else 1
                 for d in (s["shape"] or [])]
        dtype = np.dtype(s["dtype"])
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = np.zeros(shape, dtype)
    return feeds


def from_manifest(ver: dict[str, Any]) -> tuple[dict[str, OutputMetrics], "Verdict"]:
    """Metrics and verdict back from an artifact manifest's "verification" section."""
    metrics = {k: OutputMetrics(**{f: (float(v) if isinstance(v, str) and f not in ("name", "dtype", "error") else v)
                                   for f, v in m.items()}) for k, m in ver["metrics"].items()}
    vj = ver["verdict"]
    return metrics, Verdict(vj["passed"], GATES[vj["gate"]], list(vj["failures"]))


def choose_feeds(source, signature: dict[str, dict[str, Any]], inputs: dict[str, np.ndarray] | None = None
                 ) -> tuple[dict[str, np.ndarray], str]:
    """(feeds, where from): the user's inputs, else the model's sample inputs, else seeded random ones;
    checked against the model's inputs."""
    if inputs is not None:
        feeds, origin = inputs, "user"
    elif (sample := source.sample_inputs()) is not None:
        feeds, origin = sample, "model"
    else:
        feeds, origin = random_feeds(signature), "random"
    check_feeds(feeds, signature)
    return feeds, origin


def check_feeds(feeds: dict[str, np.ndarray], signature: dict[str, dict[str, Any]]) -> None:
    """Raise one clear line when feeds do not match a model's inputs (names, dtypes, static dims)."""
    from vidcc.errors import VidccError

    missing = [n for n in signature if n not in feeds]
    extra = [n for n in feeds if n not in signature]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])
        raise VidccError(f"inputs do not match the model ({'; '.join(parts)}); expected: {', '.join(signature)}")
    for name, s in signature.items():
        a = np.asarray(feeds[name])
        if s["dtype"] != a.dtype.name:
            raise VidccError(f"input '{name}' is {a.dtype.name}, the model expects {s['dtype']}")
        shape = s["shape"]
        if shape is None:
            continue
        if len(shape) != a.ndim or any(isinstance(d, int) and d > 0 and d != n for d, n in zip(shape, a.shape)):
            raise VidccError(f"input '{name}' has shape {list(a.shape)}, the model expects {shape}")


def reference_outputs(model_path: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original graph on ONNX Runtime's CPU EP, basic graph optimizations only (the reference)."""
    import onnxruntime as ort

    from vidcc.errors import VidccError

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))
    except Exception as exc:  # ORT errors are long; the first line says what is wrong
        raise VidccError(f"reference run on ONNX Runtime CPU failed: {str(exc).strip().splitlines()[0]}") from None
