"""`dynamicid make-tiny-models DIR`: random models with the real interfaces, a few MB in all.

  DIR/sd15/          a Stable Diffusion 1.5-layout diffusers folder (unet, vae, text_encoder,
                     tokenizer, scheduler), tiny widths
  DIR/clip-image/    a CLIP vision model with projection and its image processor
  DIR/clip/          a whole CLIP model and processor, for `eval --clip-model` (CLIP-T)
  DIR/dynamicid/     DynamicID weights (face encoder for 128-d dlib embeddings, SAA for that UNet,
                     IMR, KeyPointEncoder) as safetensors
  DIR/internvl/      a transformers-format InternVL (InternViT + Qwen2) and a word-level tokenizer,
                     for `prep --captioner internvl`

Every command can run on these, which checks an install without downloading anything. The images
they make are noise: the weights are random.
"""

from __future__ import annotations

import json
import os

import torch

CROSS_DIM = 32
VISION_DIM = 48


def tiny_tokenizer(folder: str):
    """A CLIP tokenizer over single letters (no merges), written to `folder`."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789,.'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters]:
        vocab.setdefault(token, len(vocab))
    with open(os.path.join(folder, "vocab.json"), "w") as handle:
        json.dump(vocab, handle)
    with open(os.path.join(folder, "merges.txt"), "w") as handle:
        handle.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    tokenizer.model_max_length = 77
    return tokenizer


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # Attention at the lowest of three levels only: a 768² two-person image at the real defaults is attention
    # over 24² tokens, a fraction of a second a step on a CPU.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_sd15(folder: str, seed: int = 0):
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tiny_tokenizer(scratch)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CROSS_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vae = AutoencoderKL(  # four levels: the real VAE's 8x downsampling, so sizes mean what they do on SD1.5
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_unet(seed),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


def tiny_clip_image(folder: str, seed: int = 0):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=VISION_DIM,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
    )
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def tiny_clip(folder: str, seed: int = 0):
    """A whole CLIP (text and vision towers, and a processor), as `eval --clip-model` reads for CLIP-T."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    os.makedirs(folder, exist_ok=True)
    tokenizer = tiny_tokenizer(folder)
    torch.manual_seed(seed)
    shared = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32}
    text = shared | {"vocab_size": len(tokenizer), "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1}
    vision = shared | {"image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return model


def tiny_dynamicid(folder: str, unet, seed: int = 0, id_dim: int = 128):
    from dynamicid.models import IMR, FaceEncoder, KeyPointEncoder
    from dynamicid.models.checkpoints import DynamicIDWeights, save_ours
    from dynamicid.models.imr import keypoint_base_for
    from dynamicid.models.saa import DynamicIDAttention

    torch.manual_seed(seed)
    weights = DynamicIDWeights(
        face_encoder=FaceEncoder.for_width(id_dim, VISION_DIM, CROSS_DIM),
        attention=DynamicIDAttention.for_unet(unet, rank=4),
        imr=IMR.for_width(CROSS_DIM, CROSS_DIM),
        keypoint_encoder=KeyPointEncoder(out_dim=CROSS_DIM, base=keypoint_base_for(CROSS_DIM)),
    )
    save_ours(weights, folder)
    return weights


INTERNVL_WORDS = (
    "A a photo of person man woman wearing glasses hat shirt jacket in the park office studio indoors "
    "outdoors standing sitting holding cup natural lighting portrait style black white red blue , ."
).split()
INTERNVL_SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# InternVL3-2B: InternViT-300M (448 px, patch 14) and Qwen2.5-1.5B; random weights for benchmarks.
INTERNVL_2B = {
    "vision_config": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=[448, 448],
        patch_size=[14, 14],
    ),
    "text_config": dict(
        model_type="qwen2",
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151674,
    ),
    "tie_word_embeddings": False,
}
INTERNVL_TINY = {
    "vision_config": dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[56, 56],
        patch_size=[14, 14],
    ),
    "text_config": dict(
        model_type="qwen2",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
    ),
}


def tiny_internvl(
    folder: str,
    seed: int = 0,
    size: dict = INTERNVL_TINY,
    chat_template: str | None = CHATML_TEMPLATE,
    device: str = "cpu",
    dtype=torch.float32,
):
    """A transformers-format InternVL folder with a word-level tokenizer (InternVL's image tokens and
    ChatML markers as special tokens). `size=INTERNVL_2B` gives InternVL3-2B's shapes."""
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(INTERNVL_SPECIAL + ["user", "assistant"] + INTERNVL_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+"), behavior="removed")
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    tokenizer.add_tokens(INTERNVL_SPECIAL[2:], special_tokens=True)  # ChatML markers are never split
    if chat_template:
        tokenizer.chat_template = chat_template
    text_config = (
        {"vocab_size": len(vocab)} | size["text_config"] | {"eos_token_id": vocab["<|im_end|>"], "pad_token_id": 0}
    )
    config = transformers.InternVLConfig(
        vision_config=size["vision_config"],
        text_config=text_config,
        image_token_id=vocab["<IMG_CONTEXT>"],
        downsample_ratio=0.5,
        tie_word_embeddings=size.get("tie_word_embeddings", True),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.InternVLForConditionalGeneration(config).to(dtype).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def make_tiny_models(folder: str, seed: int = 0) -> dict[str, str]:
    names = ("sd15", "clip-image", "clip", "dynamicid", "internvl")
    paths = {name: os.path.join(folder, name) for name in names}
    pipe = tiny_sd15(paths["sd15"], seed)
    tiny_clip_image(paths["clip-image"], seed)
    tiny_clip(paths["clip"], seed)
    tiny_dynamicid(paths["dynamicid"], pipe.unet, seed)
    tiny_internvl(paths["internvl"], seed)
    return paths
