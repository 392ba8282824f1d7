"""The zoo's catalogue: each entry's model family, configs per size, sample shapes and known facts.

Pure data, no torch import: `vidcc zoo list` reads this without loading any framework. Parameter
counts are written down (tests/zoo checks them against the built models) so listing stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SIZES = ("tiny", "small", "full")
EXPORTERS = ("legacy", "dynamo")
OPSETS = {"legacy": range(14, 21), "dynamo": range(18, 24)}  # what each torch exporter implements
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
VIDEO_DIMS = ("frames", "height", "width")  # the symbolic latent dims of every entry's video input/output


@dataclass(frozen=True)
class Shapes:
    """Sample-input geometry. frames/height/width are latent sizes (dynamic axes in the graph, unless an
    export fixes them with `static=`)."""

    frames: int
    height: int
    width: int
    text_len: int


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    family: str  # the builder in vidcc.zoo.models
    configs: dict[str, dict[str, Any]]  # size -> model config (constructor kwargs)
    shapes: dict[str, Shapes]  # size -> sample-input geometry
    params: dict[str, int]  # size -> parameter count (checked by tests/zoo)
    exporters: tuple[str, ...] = EXPORTERS  # the exporters that work
    default_exporter: str = "legacy"
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific settings (e.g. the MoE boundary)
    notes: str = ""

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(s for s in SIZES if s in self.configs)

    def __str__(self) -> str:
        return self.name


# --- Stable Video Diffusion UNet ------------------------------------------------------------------------

_SVD_FULL = dict(  # stabilityai/stable-video-diffusion-img2vid(-xt) unet/config.json
    in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(320, 640, 1280, 1280), addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768, layers_per_block=2, cross_attention_dim=1024,
    transformer_layers_per_block=1, num_attention_heads=(5, 10, 20, 20), num_frames=25,
)
_SVD_SMALL = dict(
    in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2,
    block_out_channels=(64, 128, 256), addition_time_embed_dim=32, projection_class_embeddings_input_dim=96,
    layers_per_block=1, cross_attention_dim=256, num_attention_heads=(2, 4, 8), num_frames=4,
)
# GroupNorm uses 32 groups throughout the SVD UNet, so channels stay multiples of 32.
_SVD_TINY = dict(
    in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 64), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
    layers_per_block=1, cross_attention_dim=32, num_attention_heads=(2, 4), num_frames=2,
)

# --- AnimateDiff UNet (SD1.5 layout + motion modules) --------------------------------------------------

_AD_FULL = dict(  # runwayml SD1.5 UNet + guoyww/animatediff-motion-adapter-v1-5-2
    in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlockMotion",) * 3 + ("DownBlockMotion",),
    up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
    cross_attention_dim=768, num_attention_heads=8, motion_max_seq_length=32, motion_num_attention_heads=8,
    use_motion_mid_block=True,
)
_AD_SMALL = dict(
    in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlockMotion",) * 2 + ("DownBlockMotion",),
    up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * 2,
    block_out_channels=(64, 128, 256), layers_per_block=1, norm_num_groups=32, cross_attention_dim=256,
    num_attention_heads=4, motion_max_seq_length=32, motion_num_attention_heads=4, use_motion_mid_block=True,
)
_AD_TINY = dict(
    in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, cross_attention_dim=32,
    num_attention_heads=2, motion_max_seq_length=32, motion_num_attention_heads=2, use_motion_mid_block=True,
)

# --- Wan2.1 DiT ----------------------------------------------------------------------------------------

_WAN_FULL = dict(  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
_WAN_SMALL = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
    text_dim=256, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
_WAN_TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
_WAN_LEGACY = ("the legacy TorchScript exporter cannot export Wan: aten::rms_norm (Wan's RMSNorm) has no "
               "ONNX symbolic in torch.onnx's legacy exporter; use --exporter dynamo")

# --- DiT with top-k MoE feed-forward (vidcc.zoo.moe) ---------------------------------------------------

_MOE_FULL = dict(  # DiT-MoE-B/8E2A widths (Fei et al. 2024) on video latents
    in_channels=16, out_channels=16, patch_size=(1, 2, 2), dim=768, num_heads=12, num_layers=12,
    ffn_dim=3072, num_experts=8, top_k=2, text_dim=4096, freq_dim=256,
)
_MOE_SMALL = dict(
    in_channels=16, out_channels=16, patch_size=(1, 2, 2), dim=256, num_heads=4, num_layers=6,
    ffn_dim=1024, num_experts=8, top_k=2, text_dim=256, freq_dim=64,
)
_MOE_TINY = dict(
    in_channels=4, out_channels=4, patch_size=(1, 2, 2), dim=32, num_heads=2, num_layers=2,
    ffn_dim=64, num_experts=4, top_k=2, text_dim=32, freq_dim=32,
)

_DIT_SHAPES = {"tiny": Shapes(2, 16, 16, 8), "small": Shapes(4, 32, 32, 32), "full": Shapes(2, 32, 32, 512)}

ENTRIES: dict[str, Entry] = {e.name: e for e in [
    Entry(
        name="svd-unet",
        description="Stable Video Diffusion UNet (diffusers UNetSpatioTemporalConditionModel)",
        family="svd",
        configs={"tiny": _SVD_TINY, "small": _SVD_SMALL, "full": _SVD_FULL},
        # text_len is the CLIP image-embedding token count (1 in SVD).
        shapes={"tiny": Shapes(2, 16, 16, 1), "small": Shapes(4, 32, 32, 1), "full": Shapes(4, 32, 32, 1)},
        params={"tiny": 1_299_216, "small": 21_041_558, "full": 1_524_623_082},
        notes="height/width must be multiples of 2**(levels-1); full samples are 4x32x32 latents "
              "(the published 14x72x128 works too: the axes are dynamic)",
    ),
    Entry(
        name="animatediff-unet",
        description="AnimateDiff UNet: SD1.5 layout with motion modules (diffusers UNetMotionModel)",
        family="animatediff",
        configs={"tiny": _AD_TINY, "small": _AD_SMALL, "full": _AD_FULL},
        shapes={"tiny": Shapes(2, 16, 16, 8), "small": Shapes(4, 32, 32, 16), "full": Shapes(4, 32, 32, 77)},
        params={"tiny": 1_228_388, "small": 19_999_684, "full": 1_312_730_244},
        notes="encoder_hidden_states is per video (batch, tokens, dim); the graph repeats it per frame as "
              "the AnimateDiff pipeline does; frames <= motion_max_seq_length (32)",
    ),
    Entry(
        name="wan-dit",
        description="Wan2.1 video DiT (diffusers WanTransformer3DModel; full = Wan2.1-T2V-1.3B)",
        family="wan",
        configs={"tiny": _WAN_TINY, "small": _WAN_SMALL, "full": _WAN_FULL},
        shapes=_DIT_SHAPES,
        params={"tiny": 40_864, "small": 1_251_520, "full": 1_418_996_800},
        exporters=("dynamo",),
        default_exporter="dynamo",
        extra={"legacy_error": _WAN_LEGACY},
    ),
    Entry(
        name="wan22-moe",
        description="Wan2.2-style MoE: high-noise and low-noise Wan experts in one graph, If(timestep >= 875)",
        family="wan22",
        configs={"tiny": _WAN_TINY, "small": _WAN_SMALL, "full": _WAN_FULL},
        shapes=_DIT_SHAPES,
        params={"tiny": 2 * 40_864, "small": 2 * 1_251_520, "full": 2 * 1_418_996_800},
        exporters=("dynamo",),
        default_exporter="dynamo",
        extra={"legacy_error": _WAN_LEGACY, "boundary": 0.875, "num_train_timesteps": 1000, "timestep": 900.0},
        notes="the expert choice is an ONNX If on GreaterOrEqual(timestep[0], boundary*1000); full = two "
              "Wan2.1-1.3B experts (two 14B experts exceed these machines)",
    ),
    Entry(
        name="moe-dit",
        description="Video DiT with token-level top-k MoE feed-forward (plain torch; router reads each token)",
        family="moe",
        configs={"tiny": _MOE_TINY, "small": _MOE_SMALL, "full": _MOE_FULL},
        shapes=_DIT_SHAPES,
        params={"tiny": 71_800, "small": 31_155_056, "full": 558_492_064},
        extra={"router": "token"},
    ),
    Entry(
        name="moe-dit-trouter",
        description="moe-dit whose router reads only the timestep embedding (experts fixed per timestep)",
        family="moe",
        configs={"tiny": _MOE_TINY, "small": _MOE_SMALL, "full": _MOE_FULL},
        shapes=_DIT_SHAPES,
        params={"tiny": 71_800, "small": 31_155_056, "full": 558_492_064},
        extra={"router": "timestep"},
    ),
]}
