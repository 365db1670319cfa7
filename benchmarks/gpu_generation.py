"""Denoising speed of SAA against vanilla SD1.5 and diffusers' IP-Adapter, in one process (issues 5 and 8).

Random weights at SD1.5 size (speed does not depend on the weights' values). For each execution
mode, times 50 denoising steps at 512x512 with the classifier-free-guidance batch of 2:
  vanilla      the UNet with diffusers' AttnProcessor2_0
  ip-adapter   diffusers' IPAdapterAttnProcessor2_0 with 4 image tokens
  saa-1        DynamicID SAA, one person (gate on)
  saa-2        DynamicID SAA, two persons with boxes, layout for the first 12 steps
  saa-N-folded the same with the LoRA folded into the UNet's weights (what the pipeline runs); saa-4: 4 persons
and optionally a whole image (`--decode`: denoising plus the VAE decode). Prints seconds, the ratio
to vanilla in the same mode, and peak memory.

    python benchmarks/gpu_generation.py --modes eager,channels_last,compile,cudagraphs --decode
    python benchmarks/gpu_generation.py --tiny --steps 2 --modes eager      # CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchmarks_common import build_unet, peak_text, sync, use_ip_adapter, write_json  # same folder

from dynamicid.models.saa import DynamicIDAttention, SAASettings, install_processors

BOXES = {
    2: [[0.1, 0.1, 0.5, 0.4], [0.1, 0.6, 0.5, 0.9]],
    4: [[0.05, 0.05, 0.45, 0.45], [0.05, 0.55, 0.45, 0.95], [0.55, 0.05, 0.95, 0.45], [0.55, 0.55, 0.95, 0.95]],
}


def persons_of(config: str) -> int:
    """saa-N and saa-N-folded: N persons (with boxes when N > 1); 0 for vanilla and ip-adapter."""
    return int(config.split("-")[1]) if config.startswith("saa") else 0


def denoise_fn(unet, config: str, steps: int, latents, text, device):
    """One 50-step run: the UNet calls with per-step settings, as the pipeline makes them."""
    batch = latents.shape[0] * 2
    width = unet.config.cross_attention_dim
    persons = persons_of(config)
    ids = torch.randn(batch, 4 * max(persons, 1), width, device=device, dtype=latents.dtype)
    timesteps = torch.linspace(999, 1, steps, device=device).long()
    boxes = BOXES.get(persons)
    h, w = latents.shape[-2:]

    def run(forward):
        x = latents
        # As the pipeline does: one settings object per image, boxes on the device, the step updated in place.
        settings = SAASettings(
            num_persons=max(persons, 1),
            boxes=torch.tensor(boxes, dtype=torch.float64, device=device) if boxes else None,
            infer_scale=2.0,
            infer_end=12 if boxes else 0,
            latent_size=(h, w),
        )
        for step, t in enumerate(timesteps):
            model_in = torch.cat([x, x])
            if config == "vanilla":
                noise = forward(model_in, t, text)
            elif config == "ip-adapter":
                noise = forward(model_in, t, text, added_cond_kwargs={"image_embeds": [ids[:, None]]})
            else:
                settings.step = torch.tensor(step, device=device)  # on the device, so CUDA graphs take it as an input
                noise = forward(model_in, t, torch.cat([text, ids], 1), cross_attention_kwargs={"dynamicid": settings})
            uncond, cond = noise.chunk(2)
            x = x - 0.01 * (uncond + 5.0 * (cond - uncond))  # scheduler arithmetic is negligible
        return x

    return run


def measure(label, unet, config, mode, args, device, dtype, vae=None):
    size = args.size // (2 if args.tiny else 8)
    torch.manual_seed(1)
    latents = torch.randn(1, 4, size, size, device=device, dtype=dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    if mode == "channels_last":
        unet.to(memory_format=torch.channels_last)
    forward = lambda *a, **k: unet(*a, **k, return_dict=False)[0]  # noqa: E731
    if mode in ("compile", "cudagraphs"):
        compiled = torch.compile(unet, mode="reduce-overhead" if mode == "cudagraphs" else "default", fullgraph=False)
        forward = lambda *a, **k: compiled(*a, **k, return_dict=False)[0]  # noqa: E731
    run = denoise_fn(unet, config, args.steps, latents, text, device)

    def whole():
        x = run(forward)
        if vae is not None:
            vae.decode(x / vae.config.scaling_factor)
        return x

    for _ in range(args.warmup):
        whole()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        sync(device)
        began = time.perf_counter()
        whole()
        sync(device)
        times.append(time.perf_counter() - began)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if mode == "channels_last":
        unet.to(memory_format=torch.contiguous_format)
    return {"config": config, "mode": mode, "seconds": statistics.median(times), "peak_gib": peak, "label": label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny UNet on CPU: checks the script runs")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; 64 with --tiny)")
    parser.add_argument("--modes", default="eager", help="comma-separated: eager, channels_last, compile, cudagraphs")
    parser.add_argument(
        "--configs",
        default="vanilla,ip-adapter,saa-1,saa-2",
        help="comma-separated: vanilla, ip-adapter, saa-N (N persons, boxes when N > 1), saa-N-folded (the LoRA "
        "folded into the weights, as the pipeline runs it)",
    )
    parser.add_argument("--decode", action="store_true", help="also decode with the SD VAE (a whole image)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.size = args.size or (64 if args.tiny else 512)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    vae = None
    if args.decode:
        from diffusers import AutoencoderKL

        vae = (
            (
                AutoencoderKL(
                    block_out_channels=(16, 32),
                    down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2,
                    norm_num_groups=8,
                )
                if args.tiny
                else AutoencoderKL(
                    block_out_channels=(128, 256, 512, 512),
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4,
                    layers_per_block=2,
                )
            )
            .to(device, dtype)
            .eval()
        )
    results = []
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device: {gpu}, dtype {dtype}, {args.steps} steps at {args.size}px, "
        f"CFG batch 2{', with VAE decode' if vae else ''}"
    )
    for mode in args.modes.split(","):
        for config in args.configs.split(","):
            unet = build_unet(args.tiny, device, dtype)
            if config == "ip-adapter":
                use_ip_adapter(unet)
            elif config.startswith("saa"):
                adapter = DynamicIDAttention.for_unet(unet, rank=128 if not args.tiny else 4).requires_grad_(False)
                install_processors(unet, adapter)
                if config.endswith("-folded"):  # the LoRA in the UNet's weights, as the pipeline runs it
                    adapter.fuse_lora(unet, 1.0)
            if mode in ("compile", "cudagraphs"):
                torch._dynamo.reset()
            with torch.no_grad():
                result = measure(f"{config}/{mode}", unet, config, mode, args, device, dtype, vae)
            results.append(result)
            add_ratios(results)
            write_json(args.json, gpu, results)  # after every row: a run stopped at its budget keeps what it measured
            del unet
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for r in results:
        ratio = f"x{r['vs_vanilla']:.3f} vanilla" if "vs_vanilla" in r else ""
        print(f"{r['mode']:14s} {r['config']:13s} {r['seconds']:8.3f} s  {ratio:14s} peak {peak_text(r['peak_gib'])}")


def add_ratios(results: list[dict]) -> None:
    """Each row's time over vanilla's in the same mode, where vanilla has been measured."""
    for r in results:
        base = next((v["seconds"] for v in results if v["mode"] == r["mode"] and v["config"] == "vanilla"), None)
        if base:
            r["vs_vanilla"] = r["seconds"] / base


if __name__ == "__main__":
    main()
