"""Attention blocks shared by the face encoder and IMR (module names follow the authors' checkpoints)."""

from __future__ import annotations

import torch
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*d) -> (B, heads, L, d)"""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads*d)"""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def scaled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax((q d^-1/4)(k d^-1/4)^T) v with the softmax in float32 (the scaling keeps fp16 in range)."""
    scale = q.shape[-1] ** -0.25
    weights = (q * scale) @ (k * scale).transpose(-2, -1)
    weights = torch.softmax(weights.float(), dim=-1).to(v.dtype)
    return weights @ v


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
    )


class PerceiverAttention(nn.Module):
    """Latents attend to [context, latents]."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)  # context
        self.norm2 = nn.LayerNorm(dim)  # latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context, latents = self.norm1(context), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([context, latents], dim=-2)).chunk(2, dim=-1)
        out = scaled_attention(split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads))
        return self.to_out(merge_heads(out))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        out = scaled_attention(
            split_heads(self.to_q(x), self.heads), split_heads(k, self.heads), split_heads(v, self.heads)
        )
        return self.to_out(merge_heads(out))
