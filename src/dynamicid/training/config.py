"""Typed configuration of `dynamicid train anchor` and `dynamicid train reconfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dynamicid.options import check_limits, option

PORTRAIT_PROMPT = "portrait, cinematic photo, film, professional, 4k, highly detailed"


@dataclass(frozen=True)
class TrainCommon:
    data: str = option(help="prep's output folder (manifest.parquet and images/)", positional=True)
    base_model: str = option(help="Stable Diffusion 1.5 in diffusers layout: a folder or a Hugging Face repo id")
    clip_image_encoder: str = option(
        help="CLIP ViT-H/14 vision model: a folder or a repo id with a subfolder (h94/IP-Adapter/models/image_encoder)"
    )
    output: str = option(help="where checkpoints, losses, samples and weights go", positional=True)
    steps: int = option(1000, "optimizer steps", limits=(1, 100_000_000))
    batch_size: int = option(
        8,
        "faces per micro-batch, all processes together (split evenly across them); an optimizer step sees "
        "batch_size x gradient_accumulation faces",
        limits=(1, 65536),
    )
    learning_rate: float = option(1e-4, "AdamW learning rate", limits=(1e-12, 1000.0))
    weight_decay: float = option(1e-2, "AdamW weight decay", limits=(0.0, 1000.0))
    resolution: int = option(512, "training image side, px", limits=(8, 4096))
    gradient_accumulation: int = option(
        1,
        "micro-batches per optimizer step: each step averages the gradients of gradient_accumulation micro-batches "
        "of batch_size, so it sees that many times more faces for the memory of one micro-batch",
        limits=(1, 65536),
    )
    mixed_precision: str = option("no", "autocast precision", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = option(
        False, "recompute UNet activations in the backward pass (less memory, about 2x the time)"
    )
    checkpoint_every: int = option(
        500, "save a resumable checkpoint every N steps (0: only at the end)", limits=(0, 100_000_000)
    )
    keep_checkpoints: int = option(
        3, "checkpoints kept (the latest is what a rerun resumes from)", limits=(1, 1_000_000)
    )
    sample_every: int = option(0, "write a sample image every N steps (0: never)", limits=(0, 100_000_000))
    sample_steps: int = option(20, "denoising steps of each sample image", limits=(1, 1000))
    seed: int = option(0, "random seed", limits=(0, 2**63 - 1))
    keep_outliers: bool = option(
        False, "also train on faces prep flagged as identity_outlier (unlike the rest of their identity)"
    )
    resume: bool = option(True, "start over even if OUTPUT has checkpoints")
    progress: bool = option(True, "no progress bar")

    def __post_init__(self):
        check_limits(self)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AnchorConfig(TrainCommon):
    lora_rank: int = option(128, "rank of SAA's LoRA on the UNet's attention", limits=(1, 4096))
    init_weights: str | None = option(None, "start from these DynamicID weights")
    drop_text: float = option(0.05, "share of steps trained without the text prompt", limits=(0.0, 1.0))
    drop_image: float = option(0.05, "share of steps trained without the identity", limits=(0.0, 1.0))
    drop_both: float = option(0.05, "share of steps trained without either", limits=(0.0, 1.0))
    # The gate is this layer's own measure of where identity belongs; letting gradients reach it trains
    # to_k_ip to place identity where the target face is. The choice is saved with the weights.
    gate: bool = option(True, "train with SAA's gate off")
    gate_gradients: bool = option(True, "stop gradients through the gate")
    data_workers: int = option(
        2, "DataLoader workers that read and decode micro-batches ahead of the step (0: in the step)", limits=(0, 256)
    )
    cache_clip: bool = option(
        True,
        "run the CLIP image encoder in every step instead of caching each face's "
        "features once (under OUTPUT/clip-cache)",
        flag="clip-cache",
    )


@dataclass(frozen=True)
class ReconfigConfig(TrainCommon):
    weights: str = option("", "stage-1 weights (face encoder + SAA), ours or the authors'", required=True)
    init_weights: str | None = option(
        None, "start IMR and the KeyPointEncoder from these weights (a finished reconfig's), to fine-tune them"
    )
    max_targets: int = option(32, "target images of one identity per step", limits=(1, 100_000))
    ldc_weight: float = option(1.0, "lambda in L_DFM + lambda * L_LDC", limits=(0.0, 1e6))
    batch_size: int = option(
        1,
        "identities per micro-batch, each with its targets, all processes together (split evenly across them); an "
        "optimizer step sees batch_size x gradient_accumulation identities",
        limits=(1, 65536),
    )
    prompt: str = option(PORTRAIT_PROMPT, "the text prompt of every training image")
    imr_depth: int = option(1, "IMR blocks", limits=(1, 64))
