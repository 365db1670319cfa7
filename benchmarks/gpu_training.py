"""Training-step time and peak memory (issue 6), random weights at SD1.5 size, in one process.

  peer       the UNet with diffusers' IP-Adapter processors, only their to_k_ip/to_v_ip trained
  anchor     DynamicID stage 1: face encoder + SAA (ID projections and rank-128 LoRA) trained
  anchor-gc  the same with gradient checkpointing (the configuration for 24 GiB GPUs)
  reconfig   DynamicID stage 2 with 32 targets: IMR + KeyPointEncoder trained, L_DFM + L_LDC

Each step: a UNet forward and backward on ready latents and embeddings (bf16 autocast), AdamW.
The frozen encoders (VAE, text, CLIP) are left out of all rows alike.

    python benchmarks/gpu_training.py                       # on a GPU
    python benchmarks/gpu_training.py --tiny --steps 2      # CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from benchmarks_common import build_unet, peak_text, sync, use_ip_adapter, write_json  # same folder

from dynamicid.models import IMR, FaceEncoder, KeyPointEncoder
from dynamicid.models.imr import keypoint_base_for
from dynamicid.models.saa import DynamicIDAttention, SAASettings, install_processors


def training_step(parameters, loss, device):
    """One optimiser step of `loss()` under bf16 autocast, with AdamW as both stages use."""
    optimizer = torch.optim.AdamW(list(parameters), lr=1e-4, weight_decay=1e-2)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peer_step(unet, batch, size, device):
    use_ip_adapter(unet)
    trainable = [p for n, p in unet.named_parameters() if "to_k_ip" in n or "to_v_ip" in n]
    for p in trainable:
        p.requires_grad_(True)
        p.data = p.data.float()
    width = unet.config.cross_attention_dim
    latents = torch.randn(batch, 4, size, size, device=device)
    text = torch.randn(batch, 77, width, device=device)
    tokens = torch.randn(batch, 1, 4, width, device=device)

    def loss():
        t = torch.randint(0, 1000, (batch,), device=device)
        out = unet(latents, t, text, added_cond_kwargs={"image_embeds": [tokens]}).sample
        return F.mse_loss(out.float(), latents)

    return training_step(trainable, loss, device)


def anchor_step(unet, batch, size, device, tiny):
    adapter = DynamicIDAttention.for_unet(unet, rank=4 if tiny else 128).float()
    install_processors(unet, adapter)
    width = unet.config.cross_attention_dim
    encoder = FaceEncoder.for_width(512, 64 if tiny else 1280, width).to(device)
    latents = torch.randn(batch, 4, size, size, device=device)
    text = torch.randn(batch, 77, width, device=device)
    arcface = torch.randn(batch, 512, device=device)
    clip = torch.randn(batch, 257, 64 if tiny else 1280, device=device)
    settings = SAASettings(num_persons=1)

    def loss():
        tokens = encoder(arcface, clip)
        t = torch.randint(0, 1000, (batch,), device=device)
        out = unet(
            latents, t, torch.cat([text, tokens.to(text.dtype)], 1), cross_attention_kwargs={"dynamicid": settings}
        ).sample
        return F.mse_loss(out.float(), latents)

    return training_step([*adapter.parameters(), *encoder.parameters()], loss, device)


def reconfig_step(unet, targets, size, device, tiny):
    adapter = DynamicIDAttention.for_unet(unet, rank=4 if tiny else 128).requires_grad_(False)
    install_processors(unet, adapter)
    width = unet.config.cross_attention_dim
    imr = IMR.for_width(width, width).to(device)
    keypoints = KeyPointEncoder(out_dim=width, base=keypoint_base_for(width)).to(device)
    latents = torch.randn(targets, 4, size, size, device=device)
    text = torch.randn(1, 77, width, device=device).expand(targets, -1, -1)
    source = torch.randn(4, width, device=device)
    wanted = torch.randn(targets, 4, width, device=device)
    maps = torch.rand(targets + 1, 1, 96, 96, device=device) * 2 - 1
    prompts = torch.randn(targets + 1, width, device=device)
    settings = SAASettings(num_persons=1)

    def loss():
        features = keypoints(maps)
        edited = imr.edit(source, features[:1], prompts[:1], features[1:], prompts[1:])
        t = torch.randint(0, 1000, (targets,), device=device)
        with torch.no_grad():
            reference = unet(
                latents, t, torch.cat([text, wanted], 1), cross_attention_kwargs={"dynamicid": settings}
            ).sample
        predicted = unet(
            latents, t, torch.cat([text, edited.to(text.dtype)], 1), cross_attention_kwargs={"dynamicid": settings}
        ).sample
        return F.mse_loss(edited.float(), wanted) + F.mse_loss(predicted.float(), reference.float())

    return training_step([*imr.parameters(), *keypoints.parameters()], loss, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--configs", default="peer,anchor,anchor-gc,reconfig")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    size = 16 if args.tiny else 64  # latent side for 512 px
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; bf16 autocast; batch {args.batch}; reconfig targets {args.targets}")
    results = []
    for config in args.configs.split(","):
        unet = build_unet(args.tiny, device, torch.float32)  # fp32 weights, bf16 autocast
        if config == "anchor-gc":
            unet.enable_gradient_checkpointing()
        if config == "peer":
            step = peer_step(unet, args.batch, size, device)
        elif config.startswith("anchor"):
            step = anchor_step(unet, args.batch, size, device, args.tiny)
        else:
            step = reconfig_step(unet, args.targets, size, device, args.tiny)
        for _ in range(args.warmup):
            step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            began = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        results.append({"config": config, "ms": 1000 * statistics.median(times), "peak_gib": peak})
        write_json(args.json, name, results)  # after every row: a run stopped at its budget keeps what it measured
        del unet, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peer = next((r["ms"] for r in results if r["config"] == "peer"), None)
    for r in results:
        ratio = f"x{r['ms'] / peer:.3f} peer" if peer else ""
        print(f"{r['config']:10s} {r['ms']:9.1f} ms/step  {ratio:12s} peak {peak_text(r['peak_gib'])}")
    write_json(args.json, name, results)


if __name__ == "__main__":
    main()
