"""The face encoder: an ArcFace embedding and CLIP ViT-H penultimate hidden states -> ID tokens.

Layout as IP-Adapter FaceID-Plus: `proj` turns the identity embedding into `num_tokens` latents,
which a perceiver resampler refines by attending to the CLIP features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dynamicid.models.layers import PerceiverAttention, feed_forward


@dataclass(frozen=True)
class FaceEncoderConfig:
    id_dim: int = 512  # 512 for ArcFace buffalo_l; 128 when trained on prep's default dlib embedder
    clip_dim: int = 1280  # CLIP ViT-H/14 hidden size
    cross_attention_dim: int = 768  # SD1.5
    num_tokens: int = 4
    depth: int = 4
    heads: int = 12
    dim_head: int = 64
    ff_mult: int = 4
    proj_hidden: int = 1024
    shortcut: bool = False  # FaceID-Plus-v2 adds the proj tokens back; the authors' encoder does not
    shortcut_scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_width(cls, id_dim: int, clip_dim: int, cross_attention_dim: int) -> "FaceEncoderConfig":
        """The method's encoder at SD1.5 width (12 heads of 64); narrower test models get 2 heads."""
        if cross_attention_dim >= 768:
            return cls(id_dim=id_dim, clip_dim=clip_dim, cross_attention_dim=cross_attention_dim)
        return cls(id_dim=id_dim, clip_dim=clip_dim, cross_attention_dim=cross_attention_dim,
                   heads=2, dim_head=max(1, cross_attention_dim // 2))


class FacePerceiverResampler(nn.Module):
    def __init__(self, c: FaceEncoderConfig):
        super().__init__()
        dim = c.cross_attention_dim
        self.proj_in = nn.Linear(c.clip_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, c.dim_head, c.heads), feed_forward(dim, c.ff_mult)]) for _ in range(c.depth)
        )
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, latents: torch.Tensor, clip_features: torch.Tensor) -> torch.Tensor:
        context = self.proj_in(clip_features)
        for attention, ff in self.layers:
            latents = attention(context, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceEncoder(nn.Module):
    def __init__(self, config: FaceEncoderConfig | None = None):
        super().__init__()
        self.config = c = config or FaceEncoderConfig()
        self.proj = nn.Sequential(
            nn.Linear(c.id_dim, c.proj_hidden), nn.GELU(), nn.Linear(c.proj_hidden, c.cross_attention_dim * c.num_tokens)
        )
        self.norm = nn.LayerNorm(c.cross_attention_dim)
        self.perceiver_resampler = FacePerceiverResampler(c)

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
