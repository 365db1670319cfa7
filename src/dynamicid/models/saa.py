"""SAA (Semantic-Activated Attention) and LoRA attention processors for a diffusers UNet.

Processors hold weights only. Everything that changes from call to call (persons, boxes, step,
scales, the gate switch, a list to collect gate maps) arrives as one `SAASettings` object through
`cross_attention_kwargs={"dynamicid": settings}`.

Context layout for cross-attention: [text (T tokens), id_1 (k tokens), ..., id_N (k tokens)].

Per cross-attention layer (method spec section 3):
  S = (q d^-1/4)(k_ip d^-1/4)^T, q the LoRA-augmented query        (B, heads, Nq, kN)
  gate w = minmax_q(sum over heads and ID tokens of S), w = 0 where w < threshold
  layout (steps < infer_end, strength s): w /= s+1; inside any box: w = w (s+1) + s
  routing: inside person i's box only person i's tokens are attended
  h = text_attention + id_scale * w * softmax(S) v_ip, then to_out (+ LoRA)
Boxes cover grid cells as the authors' code does: rows int(y0 h) .. int(y1 h) - 1, columns likewise.
Without boxes, N persons (N >= 1) get equal vertical strips, so a lone person's strip is the whole grid.
With the gate off the ID path is IP-Adapter's decoupled cross-attention: no gate, no layout, no routing.
One deliberate deviation: where boxes overlap, a query sees every person whose box holds it and the
boost applies once (the authors' code gives NaN there).
All of it is tensor arithmetic: nothing branches on tensor values, so it compiles without breaks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

MINMAX_EPS = 1e-6


@dataclass
class SAASettings:
    """Per-call settings, passed as cross_attention_kwargs={"dynamicid": settings}."""

    num_persons: int = 1
    tokens_per_person: int = 4
    id_scale: float | torch.Tensor = 1.0
    lora_scale: float = 1.0
    gate: bool = True
    gate_threshold: float = 0.3
    detach_gate: bool = False  # training: stop gradients through the gate's min-max
    # Normalised [y_min, x_min, y_max, x_max] per person on the latent grid: (N, 4) or (B, N, 4).
    boxes: Sequence[Any] | torch.Tensor | None = None
    strips_when_no_boxes: bool = True  # persons without boxes get equal vertical strips (one person: the whole grid)
    step: int | torch.Tensor = 0  # the pipeline passes a 0-dim tensor, so compiled code does not specialise on it
    infer_scale: float = 0.0
    infer_end: int = 0
    latent_size: tuple[int, int] | None = None  # (height, width) of the UNet input; None: square
    gate_maps: list[Any] | None = None  # when a list, every SAA layer appends {"layer", "gate": (B, h, w)}
    # Box cells and routing masks per (grid, device), built once per call on the device: eager layers then
    # share them instead of each copying boxes from the host (a copy that waits for the GPU queue).
    _cells: dict[tuple[int, int, str], Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_id_tokens(self) -> int:
        return self.num_persons * self.tokens_per_person

    @property
    def layout_strength(self) -> float | torch.Tensor:
        """infer_scale before infer_end, 0 after; a tensor when `step` is one (no Python branch on its value)."""
        if isinstance(self.step, torch.Tensor):
            return self.infer_scale * (self.step < self.infer_end).to(torch.float32)
        return float(self.infer_scale) if self.step < self.infer_end else 0.0

    def resolved_boxes(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        """(N, 4) or (B, N, 4) float64 boxes on `device`: the given ones, else equal strips, else None."""
        if self.boxes is not None:
            boxes = torch.as_tensor(
                self.boxes, dtype=torch.float64, device=device
            )  # float64: edges truncate as Python's do
            if boxes.shape[-2:] != (self.num_persons, 4):
                raise ValueError(
                    f"boxes must have shape (N, 4) or (B, N, 4) with N = {self.num_persons}, got {tuple(boxes.shape)}"
                )
            return boxes
        if self.num_persons >= 1 and self.strips_when_no_boxes:
            return equal_strips(self.num_persons, device)
        return None

    def box_cells(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(inside any box (B|1, h*w), blocked ID tokens (B|1, 1, h*w, N*k)) on this grid; None when the gate is
        off (IP-Adapter style: no layout, no routing) or there are no boxes. Cached for the call in eager mode."""
        if not self.gate:
            return None
        key = (height, width, str(device))
        compiling = torch.compiler.is_compiling()
        if not compiling and key in self._cells:
            return self._cells[key]
        boxes = self.resolved_boxes(device)
        cells = None
        if boxes is not None:
            inside = box_masks(boxes if boxes.ndim == 3 else boxes[None], height, width)  # (B|1, N, h*w)
            cells = inside.any(dim=1), ~routing_mask(inside, self.tokens_per_person)[:, None]
        if not compiling:
            self._cells[key] = cells
        return cells


def equal_strips(count: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The authors' default layout: [0, i/N, 1, (i+1)/N] for person i (made on `device`, not copied there)."""
    edges = torch.arange(count + 1, dtype=torch.float64, device=device) / count
    zeros = torch.zeros(count, dtype=torch.float64, device=device)
    ones = torch.ones(count, dtype=torch.float64, device=device)
    return torch.stack([zeros, edges[:-1], ones, edges[1:]], dim=1)


# -- the gate, routing and layout as pure tensor functions ------------------------------------------


def grid_shape(num_queries: int, latent_size: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of this layer's grid: the latent size halved (rounding up, as strided convs do) until it fits."""
    if latent_size is not None:
        height, width = latent_size
        for _ in range(8):
            if height * width == num_queries:
                return height, width
            height, width = (height + 1) // 2, (width + 1) // 2
    side = round(num_queries**0.5)
    if side * side != num_queries:
        raise ValueError(f"cannot place {num_queries} queries on a grid; pass latent_size=(height, width)")
    return side, side


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, N, 4) boxes [y0, x0, y1, x1] -> (B, N, height*width), the authors' truncation rule.

    Row r is inside when int(y0 h) <= r < int(y1 h), and column c likewise with x and w. The products
    are taken in float64, as the authors' Python floats are, so an edge like 0.7 * 10 truncates the same.
    """
    edges = boxes.to(torch.float64)
    rows = torch.arange(height, device=boxes.device, dtype=torch.float64)
    cols = torch.arange(width, device=boxes.device, dtype=torch.float64)
    inside_y = (rows >= torch.floor(edges[..., 0:1] * height)) & (rows < torch.floor(edges[..., 2:3] * height))
    inside_x = (cols >= torch.floor(edges[..., 1:2] * width)) & (cols < torch.floor(edges[..., 3:4] * width))
    return (inside_y[..., :, None] & inside_x[..., None, :]).flatten(-2)


def gate_from_logits(logits: torch.Tensor, threshold: float, eps: float = MINMAX_EPS) -> torch.Tensor:
    """(B, heads, Nq, T) raw logits -> (B, Nq): summed, min-max normalised per batch element, thresholded."""
    activation = logits.float().sum(dim=(1, 3))
    low = activation.amin(dim=-1, keepdim=True)
    high = activation.amax(dim=-1, keepdim=True)
    gate = (activation - low) / (high - low).clamp_min(eps)
    return torch.where(gate < threshold, torch.zeros_like(gate), gate)


def apply_layout(gate: torch.Tensor, inside_any: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
    """w /= s+1 everywhere, then w = w (s+1) + s inside the boxes."""
    lowered = gate / (strength + 1)
    return torch.where(inside_any, lowered * (strength + 1) + strength, lowered)


def routing_mask(inside: torch.Tensor, tokens_per_person: int) -> torch.Tensor:
    """(B, N, Nq) box membership -> (B, Nq, N*k) allowed ID tokens: a query inside boxes sees only
    those persons' tokens; a query outside every box sees all."""
    inside_any = inside.any(dim=1)  # (B, Nq)
    allowed = inside.transpose(1, 2).repeat_interleave(tokens_per_person, dim=-1)  # (B, Nq, N*k)
    return allowed | ~inside_any[..., None]


# -- processors -------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """down: in -> rank, up: rank -> out, no biases, no alpha (as the authors' checkpoints)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)  # starts as a no-op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # autocast casts for the matmuls: a copy to fp32 is waste
            return self.up(self.down(x)).to(x.dtype)
        return self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype)


class LoRAAttnProcessor(nn.Module):
    """Plain attention (one SDPA call) with LoRA on q, k, v and out. Used for self-attention."""

    def __init__(self, query_dim: int, inner_dim: int, context_dim: int, out_dim: int, rank: int = 128, name: str = ""):
        super().__init__()
        self.name = name
        self.to_q_lora = LoRALinear(query_dim, inner_dim, rank)
        self.to_k_lora = LoRALinear(context_dim, inner_dim, rank)
        self.to_v_lora = LoRALinear(context_dim, inner_dim, rank)
        self.to_out_lora = LoRALinear(inner_dim, out_dim, rank)
        # The LoRA scale the layer's own q, k, v and out weights already hold (`DynamicIDAttention.fuse_lora`);
        # a call at another scale adds only the difference. A fact about the weights, not call state.
        self.fused_scale = 0.0

    def _with_lora(self, base: nn.Module, lora: LoRALinear, x: torch.Tensor, lora_scale: float) -> torch.Tensor:
        """base(x) + lora_scale * lora(x), where base may already hold fused_scale * lora: exact for any scale,
        and one matrix product (no LoRA branch) at the fused scale."""
        extra = lora_scale - self.fused_scale
        return base(x) + extra * lora(x) if extra else base(x)

    # The steps below mirror diffusers' AttnProcessor2_0 so that zero LoRA reproduces it exactly.
    @staticmethod
    def _begin(attn: Any, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> tuple[Any, ...]:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape4d = None
        if hidden_states.ndim == 4:
            shape4d = hidden_states.shape
            batch, channels, height, width = shape4d
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        return residual, hidden_states, shape4d

    @staticmethod
    def _end(attn: Any, hidden_states: torch.Tensor, residual: torch.Tensor, shape4d: Any) -> torch.Tensor:
        hidden_states = attn.to_out[1](hidden_states)
        if shape4d is not None:
            batch, channels, height, width = shape4d
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _mask(self, attn: Any, attention_mask: torch.Tensor | None, length: int, batch: int) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        return attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

    def _text_attention(
        self,
        attn: Any,
        query: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None,
        lora_scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._with_lora(attn.to_k, self.to_k_lora, context, lora_scale)
        value = self._with_lora(attn.to_v, self.to_v_lora, context, lora_scale)
        head_dim = key.shape[-1] // attn.heads
        batch = query.shape[0]
        q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        mask = self._mask(attn, attention_mask, k.shape[2], batch)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return out, q

    def _project_out(self, attn: Any, hidden_states: torch.Tensor, lora_scale: float) -> torch.Tensor:
        return self._with_lora(attn.to_out[0], self.to_out_lora, hidden_states, lora_scale)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        dynamicid: SAASettings | None = None,
    ) -> torch.Tensor:
        lora_scale = dynamicid.lora_scale if dynamicid is not None else 1.0
        residual, hidden_states, shape4d = self._begin(attn, hidden_states, temb)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = self._with_lora(attn.to_q, self.to_q_lora, hidden_states, lora_scale)
        out, _ = self._text_attention(attn, query, context, attention_mask, lora_scale)
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        return self._end(attn, self._project_out(attn, out, lora_scale), residual, shape4d)


class SAAProcessor(LoRAAttnProcessor):
    """Cross-attention with the decoupled, gated and routed identity path."""

    def __init__(self, query_dim: int, inner_dim: int, context_dim: int, out_dim: int, rank: int = 128, name: str = ""):
        super().__init__(query_dim, inner_dim, context_dim, out_dim, rank, name)
        self.to_k_ip = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(context_dim, inner_dim, bias=False)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        dynamicid: SAASettings | None = None,
    ) -> torch.Tensor:
        if dynamicid is None or encoder_hidden_states is None or dynamicid.num_persons == 0:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, dynamicid)
        settings = dynamicid
        lora_scale = settings.lora_scale
        residual, hidden_states, shape4d = self._begin(attn, hidden_states, temb)
        id_count = settings.num_id_tokens
        text, id_tokens = encoder_hidden_states[:, :-id_count], encoder_hidden_states[:, -id_count:]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)

        query = self._with_lora(attn.to_q, self.to_q_lora, hidden_states, lora_scale)
        text_out, q = self._text_attention(attn, query, text, attention_mask, lora_scale)

        batch, heads, num_queries, head_dim = q.shape
        k_ip = self.to_k_ip(id_tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        v_ip = self.to_v_ip(id_tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        scale = head_dim**-0.25
        logits = (q * scale) @ (k_ip * scale).transpose(-2, -1)  # (B, heads, Nq, kN), computed once

        height, width = grid_shape(num_queries, settings.latent_size)
        cells = settings.box_cells(height, width, q.device)  # None with the gate off: IP-Adapter style
        logits32 = logits.float()  # one cast, shared by the softmax and the gate
        logits_for_softmax = logits32 if cells is None else logits32.masked_fill(cells[1], float("-inf"))
        id_out = torch.softmax(logits_for_softmax, dim=-1).to(v_ip.dtype) @ v_ip

        if settings.gate:
            # A detached gate is computed outside autograd: no graph is built, nothing of it is kept for backward.
            gate = gate_from_logits(logits32.detach() if settings.detach_gate else logits32, settings.gate_threshold)
            if cells is not None:
                gate = apply_layout(gate, cells[0], settings.layout_strength)
        else:
            gate = torch.ones(batch, num_queries, device=q.device)
        if settings.gate_maps is not None:
            settings.gate_maps.append(
                {"layer": self.name, "gate": gate.detach().float().reshape(batch, height, width).cpu()}
            )

        text_out = text_out.transpose(1, 2).flatten(2)
        id_out = id_out.transpose(1, 2).flatten(2)
        hidden = text_out + settings.id_scale * gate[..., None].to(id_out.dtype) * id_out
        hidden = hidden.to(query.dtype)
        return self._end(attn, self._project_out(attn, hidden, lora_scale), residual, shape4d)


# -- installing on a UNet ----------------------------------------------------------------------------


# (processor name, sizes) per attention layer of a UNet
Layout = list[tuple[str, dict[str, Any]]]


def processor_layout(unet: Any) -> Layout:
    """(processor name, sizes) in `unet.attn_processors` order, the order of the authors' SAA_module."""
    layout = []
    for name in unet.attn_processors:
        attn = unet.get_submodule(name[: -len(".processor")])
        sizes = {
            "query_dim": attn.to_q.in_features,
            "inner_dim": attn.to_q.out_features,
            "context_dim": attn.to_k.in_features,
            "out_dim": attn.to_out[0].out_features,
            "cross": bool(attn.is_cross_attention),
        }
        layout.append((name, sizes))
    return layout


class DynamicIDAttention(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' two config_name types
    """All processors of one UNet, in `attn_processors` order: SAA on cross-attention, LoRA on self-attention.

    The processors are children named "0", "1", ..., so the state dict has exactly the keys of the
    authors' "SAA_module" ("{i}.to_q_lora.down.weight"). The processors hold weights, never call state.

    Args:
        layout: (processor name, sizes) per attention layer, from `processor_layout(unet)`.
        rank: the LoRA rank.
    """

    config: Any  # diffusers' FrozenDict of the __init__ arguments, read by attribute

    @register_to_config
    def __init__(self, layout: Layout, rank: int = 128):
        super().__init__()
        for index, (name, sizes) in enumerate(layout):
            kind = SAAProcessor if sizes["cross"] else LoRAAttnProcessor
            dims = {k: sizes[k] for k in ("query_dim", "inner_dim", "context_dim", "out_dim")}
            self.add_module(str(index), kind(**dims, rank=rank, name=name))
        self.names = [name for name, _ in layout]
        self.rank = rank
        self._unfused_weights: dict[str, torch.Tensor] = {}  # the UNet's weights before `fuse_lora`, on the CPU

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(m for m in self._modules.values() if m is not None)

    def __getitem__(self, index: int) -> nn.Module:
        return self.get_submodule(str(index % len(self)))

    @classmethod
    def for_unet(cls, unet: Any, rank: int = 128, init_ip_from_unet: bool = True) -> DynamicIDAttention:
        adapter = cls(processor_layout(unet), rank)
        if init_ip_from_unet:
            adapter.init_ip_from(unet)
        return adapter.to(device=unet.device, dtype=unet.dtype)

    def _lora_pairs(self, unet: Any) -> Iterator[tuple[str, nn.Linear, LoRALinear, LoRAAttnProcessor]]:
        for name, module in zip(self.names, self):
            processor = cast(LoRAAttnProcessor, module)
            attn = unet.get_submodule(name[: -len(".processor")])
            for part, base in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
                yield f"{name}.{part}", base, getattr(processor, f"to_{part}_lora"), processor

    @property
    def fused_scale(self) -> float:
        return cast(LoRAAttnProcessor, self[0]).fused_scale if len(self) else 0.0

    def fuse_lora(self, unet: Any, lora_scale: float = 1.0) -> None:
        """Add lora_scale x LoRA into the UNet's attention weights, so inference at that scale runs no LoRA
        branch. The weights as they were are kept (on the CPU) for `unfuse_lora`, which restores them bit for
        bit. Refused while the LoRA trains: the fused copy would go stale."""
        if any(p.requires_grad for p in self.parameters()):
            raise ValueError("the LoRA is being trained (requires_grad): fusing it would freeze a stale copy")
        self.unfuse_lora(unet)
        if lora_scale == 0:
            return
        originals: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for key, base, lora, processor in self._lora_pairs(unet):
                originals[key] = base.weight.detach().to("cpu", copy=True)
                delta = lora.up.weight.float() @ lora.down.weight.float()
                base.weight.copy_(
                    (base.weight.float() + lora_scale * delta.to(base.weight.device)).to(base.weight.dtype)
                )
                processor.fused_scale = float(lora_scale)
        self._unfused_weights = originals

    def unfuse_lora(self, unet: Any) -> None:
        """The UNet's attention weights as they were before `fuse_lora` (nothing to do when not fused)."""
        originals = self._unfused_weights
        if not originals:
            return
        with torch.no_grad():
            for key, base, _, processor in self._lora_pairs(unet):
                base.weight.copy_(originals[key])
                processor.fused_scale = 0.0
        self._unfused_weights = {}

    def init_ip_from(self, unet: Any) -> None:
        """to_k_ip / to_v_ip start as copies of the layer's to_k / to_v, as for training."""
        with torch.no_grad():
            for name, processor in zip(self.names, self):
                if isinstance(processor, SAAProcessor):
                    attn = unet.get_submodule(name[: -len(".processor")])
                    processor.to_k_ip.weight.copy_(attn.to_k.weight)
                    processor.to_v_ip.weight.copy_(attn.to_v.weight)


def install_processors(unet: Any, adapter: DynamicIDAttention) -> dict[str, Any]:
    """Put the adapter's processors on the UNet. Returns the processors it replaced (for `remove_processors`)."""
    current = unet.attn_processors
    if list(current) != adapter.names:
        raise ValueError("this adapter was built for a UNet with a different attention layout")
    unet.set_attn_processor(dict(zip(adapter.names, adapter)))
    return current


def remove_processors(unet: Any, previous: dict[str, Any]) -> None:
    """Restore the processors `install_processors` replaced."""
    unet.set_attn_processor(dict(previous))
