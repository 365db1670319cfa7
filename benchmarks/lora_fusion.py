"""SAA's UNet step with the LoRA as a branch against the LoRA folded into the weights (issue 29), in one
process, with vanilla SD1.5 (diffusers' AttnProcessor2_0) as the baseline, at SD1.5 size with random weights
(speed does not depend on their values). Configurations alternate (two calls each, the second timed) so that
machine noise falls on all of them alike. Prints the median seconds per UNet call (classifier-free-guidance
batch of 2) and the ratios.

    python benchmarks/lora_fusion.py --side 256 --repeats 5 --out benchmarks/results-lora-fusion-cpu.json
    python benchmarks/lora_fusion.py --device cuda --dtype float16 --side 512 --repeats 20     # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from benchmarks_common import build_unet, sync, write_json  # same folder

from dynamicid.models.saa import DynamicIDAttention, SAASettings, install_processors


def _setup(unet, persons: int):
    """SAA processors with a LoRA that is not zero (as trained weights are), on the UNet."""
    adapter = DynamicIDAttention.for_unet(unet, rank=128)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if name.endswith("up.weight"):
                parameter.normal_(std=0.01)
    adapter.requires_grad_(False)
    vanilla = install_processors(unet, adapter)
    return adapter, vanilla


def measure(args) -> list[dict]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet = build_unet(args.tiny, device, dtype)
    adapter, vanilla = _setup(unet, args.persons)
    saa = dict(unet.attn_processors)
    side = args.side // 8
    latents = torch.randn(2, 4, side, side, device=device, dtype=dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    ids = torch.randn(2, 4 * args.persons, unet.config.cross_attention_dim, device=device, dtype=dtype)
    settings = SAASettings(num_persons=args.persons, latent_size=(side, side))

    def call(config: str) -> float:
        if config == "vanilla":
            unet.set_attn_processor(dict(vanilla))
        else:
            unet.set_attn_processor(dict(saa))
            (adapter.fuse_lora if config == "saa-folded" else lambda u, s=1.0: adapter.unfuse_lora(u))(unet, 1.0)
        context = text if config == "vanilla" else torch.cat([text, ids], 1)
        kwargs = {} if config == "vanilla" else {"cross_attention_kwargs": {"dynamicid": settings}}
        sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            unet(latents, 500, context, **kwargs)
        sync(device)
        return time.perf_counter() - started

    configs = ("vanilla", "saa-branch", "saa-folded")
    seconds: dict[str, list[float]] = {config: [] for config in configs}
    for _ in range(args.repeats):
        for config in configs:
            # The first call after the weights change runs slower on a CPU (1.5x measured: the changed weights'
            # pages), and a pipeline folds once, not per call: that call is not counted.
            call(config)
            seconds[config].append(call(config))
    medians = {config: statistics.median(values) for config, values in seconds.items()}
    return [
        {
            "config": config,
            "median_s": round(medians[config], 4),
            "vs_vanilla": round(medians[config] / medians["vanilla"], 3),
            "vs_branch": round(medians[config] / medians["saa-branch"], 3),
            "all_s": [round(v, 4) for v in seconds[config]],
        }
        for config in configs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--side", type=int, default=256, help="image side in px (latent side x 8)")
    parser.add_argument("--persons", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="the tiny test UNet (a smoke run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = measure(args)
    for row in results:
        print(
            f"{row['config']:<11} {row['median_s']:8.4f} s   "
            f"x{row['vs_vanilla']:.3f} vanilla   x{row['vs_branch']:.3f} branch"
        )
    machine = (
        f"{args.device} {args.dtype} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    write_json(args.out, machine, [{"side": args.side, "persons": args.persons, **row} for row in results])


if __name__ == "__main__":
    main()
