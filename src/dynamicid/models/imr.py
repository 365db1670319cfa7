"""IMR (Identity-Motion Reconfigurator) and the KeyPointEncoder (method spec section 4).

KeyPointEncoder: a 96x96 landmark map (normalised to [-1, 1]) -> a 768-d motion feature.
IMR: source ID tokens, the source's motion and any number of target motions -> edited ID tokens,
one set per target. A motion is [landmark feature, face-prompt text embedding] fused into latents.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from dynamicid.models.layers import PerceiverAttention, SelfAttention, feed_forward


class ConvUnit(nn.Module):
    """Conv2d -> BatchNorm2d -> (+ input, for residual units) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        return torch.relu(y + x if self.residual else y)


# (width multiple in, width multiple out, residual units after the strided one) for blocks b1..b5
_STAGES = [(1, 2, 2), (2, 4, 3), (4, 8, 2), (8, 16, 2), (16, 32, 1)]


def keypoint_base_for(out_dim: int) -> int:
    """The method's base width 16 at SD1.5 size; 2 for narrow test models."""
    return 16 if out_dim >= 768 else 2


class KeyPointEncoder(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' two config_name types
    """b0: 7x7 conv 1->16; b1..b5: stride-2 conv doubling the width, then residual units; b6: 3x3 conv
    (no padding) and 1x1 conv to out_dim. `base` 16 is the method's (widths 16..512); smaller is for tests."""

    config: Any  # diffusers' FrozenDict of the __init__ arguments, read by attribute

    @register_to_config
    def __init__(self, out_dim: int = 768, base: int = 16):
        super().__init__()
        blocks = [nn.Sequential(ConvUnit(1, base, kernel=7, stride=1, padding=3))]
        for cin, cout, repeats in _STAGES:
            cin, cout = cin * base, cout * base
            units = [ConvUnit(cin, cout, stride=2)] + [ConvUnit(cout, cout, residual=True) for _ in range(repeats)]
            blocks.append(nn.Sequential(*units))
        top = 32 * base
        blocks.append(
            nn.Sequential(ConvUnit(top, top, kernel=3, padding=0), ConvUnit(top, out_dim, kernel=1, padding=0))
        )
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = out_dim
        self.base = base

    def forward(self, landmark_map: torch.Tensor) -> torch.Tensor:
        """(B, 1, 96, 96) in [-1, 1] -> (B, out_dim)"""
        if landmark_map.shape[-3:] != (1, 96, 96):
            raise ValueError(f"KeyPointEncoder takes (B, 1, 96, 96) maps, got {tuple(landmark_map.shape)}")
        return self.blocks(landmark_map).flatten(1)


def landmark_map_to_tensor(map96: Any) -> torch.Tensor:
    """A uint8 96x96 map (0/255, from prep's NAME.png) -> (1, 96, 96) float in [-1, 1]."""
    tensor = torch.tensor(np.asarray(map96), dtype=torch.float32)  # a copy: prep's arrays may be read-only
    return (tensor / 127.5 - 1.0).reshape(1, 96, 96)


def _stack(c: Any) -> nn.ModuleList:
    return nn.ModuleList(
        nn.ModuleList(
            [
                PerceiverAttention(c.width, c.dim_head, c.heads),
                SelfAttention(c.width, c.dim_head, c.heads),
                feed_forward(c.width, c.ff_mult),
            ]
        )
        for _ in range(c.depth)
    )


def _run_stack(stack: nn.ModuleList, x: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    for block in stack:
        perceiver, self_attention, ff = cast(nn.ModuleList, block)
        x = perceiver(motion, x) + x
        x = self_attention(x) + x
        x = ff(x) + x
    return x


class IMR(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' two config_name types
    """Identity-Motion Reconfigurator: edits ID tokens from a source motion to target motions.

    Args:
        token_dim: ID token width (the UNet's cross-attention width, 768 for SD1.5).
        motion_dim: width of the landmark feature and of the face-prompt embedding, each.
        width, heads, dim_head, num_queries, ff_mult: the perceiver stacks' size.
        depth: blocks in each of the two stacks (the authors' pipeline uses 1).
    """

    config: Any  # diffusers' FrozenDict of the __init__ arguments, read by attribute

    @register_to_config
    def __init__(
        self,
        token_dim: int = 768,
        motion_dim: int = 768,
        width: int = 1024,
        heads: int = 16,
        dim_head: int = 64,
        num_queries: int = 4,
        depth: int = 1,
        ff_mult: int = 4,
    ):
        super().__init__()
        c = self.config
        fused = 2 * c.motion_dim
        self.feature_fusion = nn.Sequential(
            nn.LayerNorm(fused),
            nn.Linear(fused, c.width),
            nn.GELU(),
            nn.LayerNorm(c.width),
            nn.Linear(c.width, c.width * c.num_queries),
            nn.GELU(),
        )
        self.norm_in = nn.LayerNorm(c.token_dim)
        self.proj_in = nn.Linear(c.token_dim, c.width)
        self.disentangleNet = _stack(c)
        self.entangleNet = _stack(c)
        self.norm_out = nn.LayerNorm(c.width)
        self.proj_out = nn.Linear(c.width, c.token_dim)

    @classmethod
    def for_width(cls, token_dim: int, motion_dim: int, depth: int = 1) -> IMR:
        """The method's IMR at SD1.5 width (1024 wide, 16 heads); narrower test models are scaled down."""
        if token_dim >= 768:
            return cls(token_dim=token_dim, motion_dim=motion_dim, depth=depth)
        return cls(
            token_dim=token_dim, motion_dim=motion_dim, width=2 * token_dim, heads=2, dim_head=token_dim, depth=depth
        )

    def motion(self, landmark_feature: torch.Tensor, prompt_embedding: torch.Tensor) -> torch.Tensor:
        """(M, motion_dim) x2 -> (M, num_queries, width) motion latents."""
        fused = self.feature_fusion(torch.cat([landmark_feature, prompt_embedding], dim=-1))
        return fused.reshape(-1, self.config.num_queries, self.config.width)

    def forward(
        self, source_tokens: torch.Tensor, source_motion: torch.Tensor, target_motion: torch.Tensor
    ) -> torch.Tensor:
        """source_tokens (B, k, token_dim), source_motion (B, q, width), target_motion (B, T, q, width)
        -> edited tokens (B, T, k, token_dim)."""
        batch, targets = target_motion.shape[:2]
        x = self.proj_in(self.norm_in(source_tokens))
        x = _run_stack(self.disentangleNet, x, source_motion)  # remove the source's motion
        x = x.repeat_interleave(targets, dim=0)  # one copy per target
        x = _run_stack(self.entangleNet, x, target_motion.flatten(0, 1))  # put the target's motion in
        out = self.proj_out(self.norm_out(x))
        return out.reshape(batch, targets, *out.shape[1:])

    def edit(
        self,
        source_tokens: torch.Tensor,
        source_landmarks: torch.Tensor,
        source_prompt: torch.Tensor,
        target_landmarks: torch.Tensor,
        target_prompts: torch.Tensor,
    ) -> torch.Tensor:
        """Convenience for one identity: features (768-d) in, (T, k, token_dim) out."""
        source = self.motion(source_landmarks, source_prompt)  # (1, q, w)
        target = self.motion(target_landmarks, target_prompts)  # (T, q, w)
        return self(source_tokens.reshape(1, *source_tokens.shape[-2:]), source, target[None])[0]

    @staticmethod
    def depth_of(state_dict: dict[str, Any]) -> int:
        indices = {int(k.split(".")[1]) for k in state_dict if k.startswith("disentangleNet.")}
        return max(indices) + 1 if indices else 1
