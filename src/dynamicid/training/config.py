"""Typed configuration of `dynamicid train anchor` and `dynamicid train reconfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PORTRAIT_PROMPT = "portrait, cinematic photo, film, professional, 4k, highly detailed"


@dataclass(frozen=True)
class TrainCommon:
    data: str  # prep's output folder (manifest.parquet, images/)
    base_model: str  # SD1.5 in diffusers layout
    clip_image_encoder: str
    output: str
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    resolution: int = 512
    gradient_accumulation: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: no sample images
    sample_steps: int = 20
    seed: int = 0
    resume: bool = True  # continue from the latest checkpoint in output/checkpoints
    progress: bool = True
    log_every: int = 1

    def __post_init__(self):
        if self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be at least 1 (the latest is what a rerun resumes from), "
                             f"not {self.keep_checkpoints}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AnchorConfig(TrainCommon):
    lora_rank: int = 128
    init_weights: str | None = None  # start from existing DynamicID weights
    drop_text: float = 0.05
    drop_image: float = 0.05
    drop_both: float = 0.05
    # The gate: on during training, with gradients through it. The gate is this layer's own measure
    # of where identity belongs; letting gradients reach it trains to_k_ip to place identity where
    # the target face is. Both can be changed; the choice is saved with the weights.
    gate: bool = True
    gate_gradients: bool = True
    # The data path: DataLoader workers read and decode micro-batches ahead of the step, and a first pass
    # caches every face's CLIP image features under output/clip-cache, so no step runs the image encoder.
    data_workers: int = 2
    cache_clip: bool = True


@dataclass(frozen=True)
class ReconfigConfig(TrainCommon):
    weights: str = ""  # stage-1 weights (face encoder + SAA), ours or the authors'
    max_targets: int = 32
    ldc_weight: float = 1.0  # lambda in L_DFM + lambda * L_LDC
    batch_size: int = 1  # one identity per step (its targets make the batch)
    prompt: str = PORTRAIT_PROMPT
    imr_depth: int = 1
