"""The target interface. Concrete targets live in vidcc.targets (and plugins) and register through
`vidcc_register_targets`; heavy backends are imported inside their methods, never at import time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class Availability:
    ok: bool
    reason: str = ""  # why not
    hint: str = ""  # how to install

    def __bool__(self) -> bool:
        return self.ok


class Runner:
    """Runs a built artifact. `run(feeds)` returns outputs by name as numpy arrays."""

    input_names: list[str] = []
    output_names: list[str] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


@dataclass
class BuildContext:
    """What a build may need besides the optimized model: the sample feeds (static shapes for
    backends that need them), the pass context (bindings, log), a scratch dir and a status line."""

    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    pass_ctx: Any = None
    work_dir: Path | None = None
    status: Callable[[str], None] = lambda message: None


@dataclass(frozen=True)
class KernelTable:
    """Which ops a backend computes in one reduced dtype (its kernel registrations, as data).

    `ops` maps (domain, op type) to the first default-domain opset from which the backend has a kernel
    in that dtype, or None for none at any opset; an op not listed has one when `others` is true (a
    backend with a few gaps) and none when false (a backend with an allow-list). `source` says where
    the facts come from (it is quoted in tag-precision's reasons)."""

    ops: dict[tuple[str, str], int | None]
    others: bool = False
    source: str = ""

    def has(self, op_type: str, domain: str = "", opset: int = 10**6) -> bool:
        domain = "" if domain == "ai.onnx" else domain
        if (domain, op_type) not in self.ops:
            return self.others
        first = self.ops[(domain, op_type)]
        return first is not None and opset >= first


@dataclass
class Target:
    """A backend. Subclasses override available(), build() and load(); `default_pipeline` is a spec."""

    name: str
    description: str = ""
    default_pipeline: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    # op_type -> allowed domains; None means "every standard ONNX op" (the default)
    accepted_ops: dict[str, tuple[str, ...]] | None = None
    precision: str = "fp32"  # what it computes in: picks the verification gate (fp32 -> exact)
    # reduced dtype ("fp16", "bf16") -> the ops the backend computes in it; a dtype not listed: every op
    # its schema admits (tag-precision keeps the others fp32, so the backend never meets them low)
    low_kernels: dict[str, KernelTable] = field(default_factory=dict)

    def available(self) -> Availability:
        return Availability(True)

    def supports(self, op_type: str, domain: str = "") -> bool:
        domain = "" if domain == "ai.onnx" else domain
        if self.accepted_ops is None:
            return domain == ""
        if op_type in self.accepted_ops:
            return domain in self.accepted_ops[op_type]
        return domain == "" and "*" in self.accepted_ops

    def computes(self, op_type: str, domain: str, dtype: str, opset: int) -> bool:
        """Whether the backend has a kernel for `op_type` in the reduced `dtype` at that opset."""
        table = self.low_kernels.get(dtype)
        return table is None or table.has(op_type, domain, opset)

    def tool_versions(self) -> dict[str, str]:
        return {}

    def build(self, model_path: Path, out_dir: Path, ctx: BuildContext) -> dict[str, Any]:
        """Build from an optimized ONNX file into out_dir; returns manifest entries: "files" (names
        relative to out_dir that belong to the artifact) and any JSON-able settings to record."""
        raise NotImplementedError

    def load(self, artifact_dir: Path, manifest: dict[str, Any]) -> Runner:
        raise NotImplementedError

    def tune(self, model_path: Path, ctx: BuildContext, budget_s: float) -> dict[str, Any]:
        """Spend up to budget_s seconds tuning for this model (for later builds); returns a report."""
        from vidcc.errors import TargetError

        raise TargetError(f"target '{self.name}' has nothing to tune")
