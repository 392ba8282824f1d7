"""Static timestep bindings: the timesteps a real diffusion pipeline feeds its model, per step.

Wan2.2 (and Wan2.1) sample with flow-matching UniPC and a sigma shift. diffusers'
`UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction")`
computes, for N inference steps and T = num_train_timesteps = 1000:

    s_i      = linspace(1, 1/T, N + 1)[i]                   for i = 0 .. N-1   (the last point dropped)
    sigma_i  = shift * s_i / (1 + (shift - 1) * s_i)       (the shift; shift = 1 is the identity)
    sigma_0 -= 1e-6 when sigma_0 == 1                      (the scheduler keeps log(alpha) finite)
    t_i      = int(sigma_i * T)                            (truncated: the pipeline's timesteps are int64)

and the Wan2.2 pipeline runs the high-noise expert (`transformer`) while `t_i >= boundary * T`, the
low-noise one (`transformer_2`) after. Wan2.2's published settings (Wan2.2 repo `configs/`):

    wan22-t2v  T2V-A14B   40 steps, shift 12.0, boundary 0.875  ->  26 high-noise + 14 low-noise steps
    wan22-i2v  I2V-A14B   40 steps, shift  5.0, boundary 0.900  ->  15 high-noise + 25 low-noise steps

tests/test_schedules.py checks these lists against diffusers' scheduler itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcc.errors import VidccError

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class Schedule:
    name: str
    steps: int
    shift: float
    boundary: float | None  # high-noise expert while t >= boundary * 1000; None: one model
    timesteps: tuple[int, ...]
    sigmas: tuple[float, ...]

    @property
    def boundary_timestep(self) -> float | None:
        return None if self.boundary is None else self.boundary * NUM_TRAIN_TIMESTEPS

    def expert(self, step: int) -> str:
        """Which Wan2.2 expert the real pipeline runs at this step."""
        b = self.boundary_timestep
        return "high-noise" if b is None or self.timesteps[step] >= b else "low-noise"

    def counts(self) -> dict[str, int]:
        out = {"high-noise": 0, "low-noise": 0}
        for i in range(self.steps):
            out[self.expert(i)] += 1
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "steps": self.steps, "shift": self.shift, "boundary": self.boundary,
                "timesteps": list(self.timesteps), "counts": self.counts()}


# name -> (steps, shift, boundary); from the Wan2.2 repo's wan/configs (sample_steps, sample_shift, boundary)
PRESETS: dict[str, tuple[int, float, float | None]] = {
    "wan22-t2v": (40, 12.0, 0.875),
    "wan22-i2v": (40, 5.0, 0.900),
    "wan21-t2v": (50, 5.0, None),
}


def flow_unipc_sigmas(steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The shifted flow sigmas of diffusers' UniPC (use_flow_sigmas=True), without the final 0."""
    if steps < 1:
        raise VidccError(f"schedule: steps must be >= 1, got {steps}")
    if shift <= 0:
        raise VidccError(f"schedule: shift must be > 0, got {shift}")
    s = np.linspace(1, 1 / num_train_timesteps, steps + 1)[:-1]
    sigmas = shift * s / (1 + (shift - 1) * s)
    if abs(sigmas[0] - 1) < 1e-6:
        sigmas[0] -= 1e-6
    return sigmas


def make_schedule(steps: int, shift: float, boundary: float | None = None, name: str = "custom") -> Schedule:
    if boundary is not None and not 0.0 <= boundary <= 1.0:
        raise VidccError(f"schedule: boundary must be within [0, 1], got {boundary}")
    sigmas = flow_unipc_sigmas(steps, shift)
    # torch's .to(int64) truncates toward zero, as numpy's astype does
    timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)
    return Schedule(name, steps, float(shift), boundary, tuple(int(t) for t in timesteps),
                    tuple(float(s) for s in sigmas))


def parse_schedule(spec: str) -> Schedule:
    """A preset name (`wan22-t2v`), optionally with overrides, or explicit options:
    `wan22-t2v`, `wan22-i2v:steps=20`, `steps=30,shift=8,boundary=0.9`."""
    spec = spec.strip()
    head, _, rest = spec.partition(":")
    if "=" in head:
        name, rest = "custom", spec
        steps, shift, boundary = None, None, None
    elif head in PRESETS:
        name = head
        steps, shift, boundary = PRESETS[head]
    else:
        raise VidccError(f"unknown schedule '{head}'; known: {', '.join(PRESETS)}, or steps=N,shift=S[,boundary=B]")
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        try:
            if key == "steps":
                steps = int(value)
            elif key == "shift":
                shift = float(value)
            elif key == "boundary":
                boundary = None if value.lower() in ("none", "") else float(value)
            else:
                raise VidccError(f"schedule '{spec}': unknown option '{key}' (steps, shift, boundary)")
        except ValueError:
            raise VidccError(f"schedule '{spec}': '{item}' is not a number") from None
    if steps is None or shift is None:
        raise VidccError(f"schedule '{spec}': give steps and shift (e.g. steps=40,shift=12,boundary=0.875)")
    return make_schedule(steps, shift, boundary, name)


def parse_bind(items: list[str] | None) -> dict[str, list[float]]:
    """`--bind NAME=V1,V2,...` (repeatable) -> {NAME: [V1, V2, ...]}."""
    out: dict[str, list[float]] = {}
    for item in items or ():
        name, eq, values = item.partition("=")
        if not eq or not name.strip() or not values.strip():
            raise VidccError(f"--bind '{item}': expected NAME=V1,V2,... (e.g. timestep=999,980)")
        try:
            parsed = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise VidccError(f"--bind '{item}': values must be numbers") from None
        out.setdefault(name.strip(), []).extend(int(v) if v.is_integer() else v for v in parsed)
    return out
