"""Pieces the GPU benchmarks share: SD1.5-size (or tiny) UNets with random weights, diffusers'
IP-Adapter processors as the peer, and device synchronisation."""

from __future__ import annotations

import json

import torch

from dynamicid.models.checkpoints import SD15_UNET_CONFIG


def build_unet(tiny: bool, device, dtype):
    """SD1.5's UNet with random weights, or the tiny test UNet for a CPU smoke run."""
    from diffusers import UNet2DConditionModel

    from dynamicid.testing.tiny_models import tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet() if tiny else UNet2DConditionModel(**SD15_UNET_CONFIG)
    return unet.to(device, dtype).eval().requires_grad_(False)


def use_ip_adapter(unet, tokens: int = 4) -> None:
    """diffusers' own IP-Adapter processors on every cross-attention layer, fed 4 ready-made tokens."""
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    processors = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name[: -len(".processor")])
        if attn.is_cross_attention:
            processors[name] = IPAdapterAttnProcessor2_0(
                attn.to_q.out_features, attn.to_k.in_features, num_tokens=(tokens,)
            )
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
    unet.to(unet.device, unet.dtype)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection([torch.nn.Identity()])
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_text(gib: float | None) -> str:
    return f"{gib:.2f} GiB" if gib is not None else "-"


def write_json(path: str | None, device: str, results: list[dict]) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump({"device": device, "results": results}, handle, indent=2)


def results_path(name: str) -> str:
    """Where a script that always records its figures writes them: beside it, or under
    $DYNAMICID_BENCHMARK_RESULTS (the suite's tiny runs, which must not replace the measured ones)."""
    import os

    folder = os.environ.get("DYNAMICID_BENCHMARK_RESULTS") or os.path.dirname(os.path.abspath(__file__))
    return os.path.join(folder, name)
