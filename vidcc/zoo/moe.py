"""A small video DiT whose feed-forward layers are token-level top-k mixtures of experts (plain torch).

The router is Linear -> Softmax -> TopK, and dispatch is sparse: each expert gathers the tokens routed to
it (NonZero + Gather) and scatters its weighted output back (ScatterND with add). With
`router="timestep"` the router reads only the timestep embedding, so every token of a sample picks the
same experts, and binding the timestep makes the expert choice a constant a compiler can fold.

Positions come from a depthwise 3-D convolution over the latent grid (a conditional positional
encoding) rather than a fixed table, so frames, height and width stay dynamic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MoEDiTConfig:
    in_channels: int = 4
    out_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    dim: int = 32
    num_heads: int = 2
    num_layers: int = 2
    ffn_dim: int = 64
    num_experts: int = 4
    top_k: int = 2
    text_dim: int = 32
    freq_dim: int = 32
    router: str = "token"  # "token": reads each token; "timestep": reads only the timestep embedding


def timestep_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    args = timestep.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim or dim, dim)
        self.to_v = nn.Linear(context_dim or dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in
                   (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class MoEFeedForward(nn.Module):
    """Top-k mixture of FeedForward experts with sparse token dispatch."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, router_dim: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(router_dim, num_experts)
        self.experts = nn.ModuleList(FeedForward(dim, hidden) for _ in range(num_experts))

    def forward(self, x: torch.Tensor, router_input: torch.Tensor) -> torch.Tensor:
        # router_input: (B, N, R) per token, or (B, 1, R) per sample (timestep routing).
        batch, tokens, dim = x.shape
        probs = torch.softmax(self.router(router_input), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.expand(batch, tokens, self.top_k).reshape(-1, self.top_k)
        chosen = chosen.expand(batch, tokens, self.top_k).reshape(-1, self.top_k)
        flat = x.reshape(-1, dim)
        out = torch.zeros_like(flat)
        for index, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == index)
            routed = expert(flat[token]) * weights[token, slot].unsqueeze(-1)
            out = out.index_add(0, token, routed)
        return out.reshape(batch, tokens, dim)


class MoEDiTBlock(nn.Module):
    """Self-attention, cross-attention to text, MoE feed-forward; adaLN modulation from the timestep."""

    def __init__(self, cfg: MoEDiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, cfg.num_heads, context_dim=dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.moe = MoEFeedForward(dim, cfg.ffn_dim, cfg.num_experts, cfg.top_k, router_dim=dim)
        self.modulation = nn.Linear(dim, 6 * dim)
        self.route_by_timestep = cfg.router == "timestep"

    def forward(self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(temb)).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        x = x + self.cross_attn(self.norm2(x), context)
        h = self.norm3(x) * (1 + scale2) + shift2
        router_input = temb.unsqueeze(1) if self.route_by_timestep else h
        return x + gate2 * self.moe(h, router_input)


class MoEDiT(nn.Module):
    def __init__(self, cfg: MoEDiTConfig):
        super().__init__()
        if cfg.router not in ("token", "timestep"):
            raise ValueError(f"router must be 'token' or 'timestep', not {cfg.router!r}")
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embed = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_conv = nn.Conv3d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(MoEDiTBlock(cfg) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, cfg.out_channels * math.prod(cfg.patch_size))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        batch, _, frames, height, width = hidden_states.shape
        pt, ph, pw = self.cfg.patch_size
        x = self.patch_embed(hidden_states)
        x = x + self.pos_conv(x)
        x = x.flatten(2).transpose(1, 2)
        temb = self.time_mlp(timestep_embedding(timestep, self.cfg.freq_dim).to(x.dtype))
        context = self.text_proj(encoder_hidden_states)
        for block in self.blocks:
            x = block(x, context, temb)
        shift, scale = self.modulation_out(F.silu(temb)).unsqueeze(1).chunk(2, dim=-1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)
        # unpatchify: (B, f*h*w, C*pt*ph*pw) -> (B, C, F, H, W)
        x = x.reshape(batch, frames // pt, height // ph, width // pw, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(batch, -1, frames, height, width)
