"""Build a zoo entry as a torch module with deterministic weights and sample inputs (imports torch).

Every module here takes its graph inputs as positional tensors in graph order and returns one tensor,
so both exporters see the same signature and the ONNX input names are exactly the `inputs` keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vidcc.errors import VidccError
from vidcc.zoo.entries import Entry, Shapes

SEED = 20240901


@dataclass
class Built:
    module: nn.Module
    inputs: dict[str, torch.Tensor]  # graph-input name -> sample tensor, in graph order
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]  # input or output name -> {axis: symbolic dim name}
    dim_max: dict[str, int] = field(default_factory=dict)  # symbolic dim -> largest value the code allows
    experts: dict[str, nn.Module] = field(default_factory=dict)  # wan22: exported one by one

    def __post_init__(self):
        # the wrappers are fresh modules (training mode by default); export and run everything in eval mode
        self.module.eval()
        for expert in self.experts.values():
            expert.eval()


def _seed_of(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "little")


@torch.no_grad()
def reinit_(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter from a seeded generator.

    diffusers zero-inits some output projections (the graph would then be partly trivial), so all
    weights are redrawn: matrices/kernels with std 1/sqrt(fan_in) (unit gain, activations stay O(1)),
    norm scales near 1, biases and other tensors small.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if param.ndim >= 2 and name.endswith("weight"):
            value = noise / math.sqrt(math.prod(param.shape[1:]))
        elif param.ndim == 1 and name.endswith("weight"):
            value = 1.0 + 0.1 * noise
        else:
            value = 0.02 * noise
        param.copy_(value.to(param.dtype))


def _from_pretrained(cls, weights: Path, subfolders: tuple[str, ...], root_ok: bool = True):
    """A pipeline directory (weights/<subfolder>/config.json) or, if root_ok, a model directory."""
    kw = dict(torch_dtype=torch.float32, low_cpu_mem_usage=False)
    for sub in subfolders:
        if (weights / sub / "config.json").is_file():
            return cls.from_pretrained(weights, subfolder=sub, **kw)
    if root_ok and (weights / "config.json").is_file():
        return cls.from_pretrained(weights, **kw)
    places = [*subfolders, "."] if root_ok else list(subfolders)
    raise VidccError(f"no diffusers checkpoint in {weights} (looked for config.json in {', '.join(places)})")


def _model(cls, entry: Entry, size: str, weights: Path | None, subfolders: tuple[str, ...], tag: str = ""):
    if weights is not None:
        # a Wan2.2 pipeline keeps its experts in transformer/ and transformer_2/; no single-model fallback
        return _from_pretrained(cls, weights, subfolders, root_ok=entry.family != "wan22").eval().float()
    torch.manual_seed(_seed_of(entry.name, size, tag))
    model = cls(**entry.configs[size]).eval()
    reinit_(model, _seed_of(entry.name, size, tag, "weights"))
    return model


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32)


class _SVD(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
        return self.unet(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False)[0]


class _AnimateDiff(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        # UNetMotionModel wants text per frame; the AnimateDiff pipeline repeats it, here the graph does.
        frames = sample.shape[2]
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _Wan(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        return self.transformer(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]


class Wan22MoE(nn.Module):
    """Wan2.2's expert switch: the high-noise expert for timestep >= boundary * 1000, else the low-noise one.

    Eager only (the torch reference); the ONNX graph is built by exporting each expert and joining them
    under an If (vidcc.zoo.compose), because torch.cond cannot trace Wan with dynamic shapes.
    """

    def __init__(self, high_noise: nn.Module, low_noise: nn.Module, boundary_timestep: float):
        super().__init__()
        self.high_noise = high_noise
        self.low_noise = low_noise
        self.boundary_timestep = boundary_timestep

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        expert = self.high_noise if bool(timestep[0] >= self.boundary_timestep) else self.low_noise
        return expert(hidden_states, timestep, encoder_hidden_states)


def _video_axes(layout: str) -> dict[int, str]:
    # layout "BFCHW" (SVD) or "BCFHW" (AnimateDiff, Wan, moe-dit)
    return {layout.index("F"): "frames", layout.index("H"): "height", layout.index("W"): "width"}


def build(entry: Entry, size: str, weights: Path | None = None, static: dict[str, int] | None = None) -> Built:
    """The module, its sample inputs and its dynamic axes. `static` ({"frames": 5, ...}, names from
    VIDEO_DIMS, already validated by zoo.export) builds the sample inputs at those latent sizes and leaves
    those axes out of `Built.dynamic`, so the exporters fix them; dims not named stay dynamic."""
    if size not in entry.configs:
        raise VidccError(f"unknown size {size!r} for {entry.name}; sizes: {', '.join(entry.sizes)}")
    static = dict(static or {})
    built = _build(entry, size, weights, dataclasses.replace(entry.shapes[size], **static))
    for dim, value in static.items():
        if value > built.dim_max.get(dim, value):
            raise VidccError(f"static {dim}={value} is too large for {entry.name}: at most {built.dim_max[dim]}")
    if static:
        built.dynamic = {name: kept for name, axes in built.dynamic.items()
                         if (kept := {axis: dim for axis, dim in axes.items() if dim not in static})}
        built.dim_max = {dim: value for dim, value in built.dim_max.items() if dim not in static}
    return built


def _build(entry: Entry, size: str, weights: Path | None, shapes: Shapes) -> Built:
    gen = torch.Generator().manual_seed(_seed_of(entry.name, size, "inputs"))
    f, h, w, t = shapes.frames, shapes.height, shapes.width, shapes.text_len

    if entry.family == "svd":
        from diffusers import UNetSpatioTemporalConditionModel

        unet = _model(UNetSpatioTemporalConditionModel, entry, size, weights, ("unet",))
        cfg = unet.config
        inputs = {
            "sample": _randn(gen, 1, f, cfg.in_channels, h, w),
            "timestep": torch.tensor([0.5]),  # SVD's EDM c_noise = 0.25 * log(sigma)
            "encoder_hidden_states": _randn(gen, 1, t, cfg.cross_attention_dim),
            # fps - 1, motion bucket id, noise augmentation strength: the pipeline's defaults
            "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]),
        }
        axes = _video_axes("BFCHW")
        # diffusers' Upsample2D switches code path at batch*frames >= 64
        return Built(_SVD(unet), inputs, ["out_sample"], {"sample": axes, "out_sample": axes}, {"frames": 63})

    if entry.family == "animatediff":
        from diffusers import UNetMotionModel

        unet = _model(UNetMotionModel, entry, size, weights, ("unet",))
        cfg = unet.config
        inputs = {
            "sample": _randn(gen, 1, cfg.in_channels, f, h, w),
            "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": _randn(gen, 1, t, cfg.cross_attention_dim),
        }
        axes = _video_axes("BCFHW")
        return Built(_AnimateDiff(unet), inputs, ["out_sample"], {"sample": axes, "out_sample": axes},
                     {"frames": cfg.motion_max_seq_length})

    if entry.family in ("wan", "wan22"):
        from diffusers import WanTransformer3DModel

        axes = _video_axes("BCFHW")
        dynamic = {"hidden_states": axes, "out_hidden_states": axes}
        if entry.family == "wan":
            model = _Wan(_model(WanTransformer3DModel, entry, size, weights, ("transformer",)))
            experts = {}
            timestep = 500.0
        else:
            high = _Wan(_model(WanTransformer3DModel, entry, size, weights, ("transformer",), "high_noise"))
            low = _Wan(_model(WanTransformer3DModel, entry, size, weights, ("transformer_2",), "low_noise"))
            boundary = entry.extra["boundary"] * entry.extra["num_train_timesteps"]
            model = Wan22MoE(high, low, boundary)
            experts = {"high_noise": high, "low_noise": low}
            timestep = entry.extra["timestep"]
        cfg = model.high_noise.transformer.config if experts else model.transformer.config
        inputs = {
            "hidden_states": _randn(gen, 1, cfg.in_channels, f, h, w),
            "timestep": torch.tensor([timestep]),
            "encoder_hidden_states": _randn(gen, 1, t, cfg.text_dim),
        }
        return Built(model, inputs, ["out_hidden_states"], dynamic, experts=experts)

    if entry.family == "moe":
        from vidcc.zoo.moe import MoEDiT, MoEDiTConfig

        if weights is not None:
            raise VidccError(f"{entry.name} has no published checkpoint; local weights are not supported")
        cfg = MoEDiTConfig(**entry.configs[size], router=entry.extra["router"])
        torch.manual_seed(_seed_of(entry.name, size))
        model = MoEDiT(cfg).eval()
        reinit_(model, _seed_of(entry.name, size, "weights"))
        inputs = {
            "hidden_states": _randn(gen, 1, cfg.in_channels, f, h, w),
            "timestep": torch.tensor([500.0]),
            "encoder_hidden_states": _randn(gen, 1, t, cfg.text_dim),
        }
        axes = _video_axes("BCFHW")
        return Built(model, inputs, ["out_hidden_states"], {"hidden_states": axes, "out_hidden_states": axes})

    raise VidccError(f"zoo entry {entry.name} has unknown family {entry.family!r}")


def count_params(entry: Entry, size: str) -> int:
    """Parameter count without allocating weights (modules built on the meta device)."""
    with torch.device("meta"):
        if entry.family == "moe":
            from vidcc.zoo.moe import MoEDiT, MoEDiTConfig

            return sum(p.numel() for p in MoEDiT(MoEDiTConfig(**entry.configs[size])).parameters())
        import diffusers

        cls = {"svd": diffusers.UNetSpatioTemporalConditionModel, "animatediff": diffusers.UNetMotionModel,
               "wan": diffusers.WanTransformer3DModel, "wan22": diffusers.WanTransformer3DModel}[entry.family]
        n = sum(p.numel() for p in cls(**entry.configs[size]).parameters())
    return 2 * n if entry.family == "wan22" else n
