"""The face encoder: an ArcFace embedding and CLIP ViT-H penultimate hidden states -> ID tokens.

Layout as IP-Adapter FaceID-Plus: `proj` turns the identity embedding into `num_tokens` latents,
which a perceiver resampler refines by attending to the CLIP features.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from dynamicid.models.layers import PerceiverAttention, feed_forward


class FacePerceiverResampler(nn.Module):
    def __init__(self, c: Any):
        super().__init__()
        dim = c.cross_attention_dim
        self.proj_in = nn.Linear(c.clip_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, c.dim_head, c.heads), feed_forward(dim, c.ff_mult)])
            for _ in range(c.depth)
        )
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, latents: torch.Tensor, clip_features: torch.Tensor) -> torch.Tensor:
        context = self.proj_in(clip_features)
        for block in self.layers:
            attention, ff = cast(nn.ModuleList, block)
            latents = attention(context, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceEncoder(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' two config_name types
    """Identity embedding + CLIP features -> `num_tokens` ID tokens of the UNet's cross-attention width.

    Args:
        id_dim: width of the identity embedding (512 for ArcFace buffalo_l; 128 for prep's default dlib).
        clip_dim: width of the CLIP image encoder's hidden states (1280 for ViT-H/14).
        cross_attention_dim: the UNet's cross-attention width (768 for SD1.5).
        num_tokens: ID tokens per person.
        depth, heads, dim_head, ff_mult: the perceiver resampler's size.
        proj_hidden: hidden width of the embedding projection.
        shortcut, shortcut_scale: add the projected tokens back (FaceID-Plus-v2); the authors' encoder does not.
    """

    config: Any  # diffusers' FrozenDict of the __init__ arguments, read by attribute

    @register_to_config
    def __init__(
        self,
        id_dim: int = 512,
        clip_dim: int = 1280,
        cross_attention_dim: int = 768,
        num_tokens: int = 4,
        depth: int = 4,
        heads: int = 12,
        dim_head: int = 64,
        ff_mult: int = 4,
        proj_hidden: int = 1024,
        shortcut: bool = False,
        shortcut_scale: float = 1.0,
    ):
        super().__init__()
        c = self.config
        self.proj = nn.Sequential(
            nn.Linear(c.id_dim, c.proj_hidden),
            nn.GELU(),
            nn.Linear(c.proj_hidden, c.cross_attention_dim * c.num_tokens),
        )
        self.norm = nn.LayerNorm(c.cross_attention_dim)
        self.perceiver_resampler = FacePerceiverResampler(c)

    @classmethod
    def for_width(cls, id_dim: int, clip_dim: int, cross_attention_dim: int) -> FaceEncoder:
        """The method's encoder at SD1.5 width (12 heads of 64); narrower test models get 2 heads."""
        if cross_attention_dim >= 768:
            return cls(id_dim=id_dim, clip_dim=clip_dim, cross_attention_dim=cross_attention_dim)
        return cls(
            id_dim=id_dim,
            clip_dim=clip_dim,
            cross_attention_dim=cross_attention_dim,
            heads=2,
            dim_head=max(1, cross_attention_dim // 2),
        )

    def forward(self, id_embedding: torch.Tensor, clip_features: torch.Tensor) -> torch.Tensor:
        """(B, id_dim), (B, L, clip_dim) -> (B, num_tokens, cross_attention_dim)"""
        c = self.config
        if id_embedding.shape[-1] != c.id_dim:
            raise ValueError(f"identity embedding has {id_embedding.shape[-1]} dims; this encoder takes {c.id_dim}")
        if clip_features.shape[-1] != c.clip_dim:
            raise ValueError(f"CLIP features have width {clip_features.shape[-1]}; this encoder takes {c.clip_dim}")
        tokens = self.norm(self.proj(id_embedding).reshape(-1, c.num_tokens, c.cross_attention_dim))
        out = self.perceiver_resampler(tokens, clip_features)
        return tokens + c.shortcut_scale * out if c.shortcut else out

    def unconditional(self, uncond_clip_features: torch.Tensor) -> torch.Tensor:
        """Tokens for classifier-free guidance: a zero identity and the CLIP features of an all-zero image."""
        zeros = uncond_clip_features.new_zeros(uncond_clip_features.shape[0], self.config.id_dim)
        return self(zeros, uncond_clip_features)
