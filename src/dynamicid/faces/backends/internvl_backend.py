"""InternVL captions from a local folder in transformers' own InternVL format.

Give --captioner-model a folder such as OpenGVLab/InternVL3-2B-hf (the "-hf" checkpoints; the
original trust_remote_code ones are a different format): config.json with model_type "internvl",
the safetensors weights, and the tokenizer files. Runs on the GPU Spark assigned to the task (else
the first GPU, in bf16; else the CPU in fp32), with batched greedy generation. The image is encoded once
per batch (in the first, prefill step; the decoding steps read the KV cache), and every face shares one
prompt, so rows need no sorting by length. `static_cache` gives transformers a static KV cache, which it
compiles on a GPU.

The model sees the aligned 512 px face as one 448 px tile (no dynamic tiling: the face is already
cropped) and is asked for the scene, action, accessories, clothing and style. Its answer is
prefilled with "A photo of", cut at a token limit, and passed through `caption.guard_description`
(length, repetition, no names); expression and head orientation come from the face prompt.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os

import cv2
import numpy as np

from dynamicid.faces.backends.base import BackendError, Resources
from dynamicid.faces.caption import CaptionGuard, caption_from_description, guard_description

INSTRUCTION = (
    "Describe this photo in one sentence: the scene, what the person is doing, accessories, clothing and the "
    "photographic style. Do not describe the facial expression or which way the head is turned, and do not name "
    "or guess who the person is."
)
PREFILL = "A photo of"
EXPECTED = (
    "a transformers-format InternVL folder (e.g. OpenGVLab/InternVL3-2B-hf): config.json with model_type "
    '"internvl", model*.safetensors and tokenizer files'
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


def _read_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def check_folder(path: str | None) -> tuple[str, dict]:
    """The folder and its config, or a BackendError that names what is missing."""
    if not path or not os.path.isdir(path):
        raise BackendError(f"InternVL model folder not found: {path!r}; give captioner_model {EXPECTED}")
    config = _read_json(path, "config.json")
    if not config:
        raise BackendError(f"{path} has no config.json; expected {EXPECTED}")
    if config.get("model_type") != "internvl":
        raise BackendError(
            f"{path}/config.json has model_type {config.get('model_type')!r}, not 'internvl'. The original "
            'trust_remote_code InternVL checkpoints are not supported; use the transformers-format one ("-hf")'
        )
    if not glob.glob(os.path.join(path, "*.safetensors")):
        raise BackendError(f"{path} holds no *.safetensors weights; expected {EXPECTED}")
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        raise BackendError(f"{path} holds no tokenizer (tokenizer.json, tokenizer_config.json); expected {EXPECTED}")
    return path, config


def folder_fingerprint(path: str) -> str:
    """12 hex digits over config.json and the weight files' names and sizes (cheap for a 4 GB model)."""
    digest = hashlib.sha256()
    with open(os.path.join(path, "config.json"), "rb") as handle:
        digest.update(handle.read())
    for weights in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        digest.update(f"{os.path.basename(weights)}:{os.path.getsize(weights)}".encode())
    return digest.hexdigest()[:12]


def image_seq_length(config: dict, processor_config: dict) -> int:
    """Context tokens per 448 px tile: (image_size / patch_size)^2 * downsample_ratio^2, unless the folder says."""
    if "image_seq_length" in processor_config:
        return int(processor_config["image_seq_length"])
    vision = config.get("vision_config", {})
    side = np.atleast_1d(vision.get("image_size", 448))[0]
    patch = np.atleast_1d(vision.get("patch_size", 14))[0]
    return int(round((side // patch) ** 2 * config.get("downsample_ratio", 0.5) ** 2))


class InternVLCaptioner:
    name = "internvl"

    def __init__(
        self,
        model_path: str | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        resources: Resources | None = None,
        static_cache: bool = False,
        **options,
    ):
        folder, config = check_folder(model_path)
        import torch
        import transformers

        if not hasattr(transformers, "InternVLForConditionalGeneration"):
            raise BackendError(
                f"transformers {transformers.__version__} has no InternVL support; pip install 'transformers>=4.56'"
            )
        self._torch = torch
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        # A static KV cache: the same greedy captions (tested), and on a GPU transformers compiles the decoding
        # step for it (a warm-up per batch shape, then faster steps).
        self.static_cache = static_cache
        self.guard = CaptionGuard()
        self.device = (resources or Resources()).torch_device()
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            self.model = transformers.InternVLForConditionalGeneration.from_pretrained(folder, dtype=self.dtype)
        except Exception as err:
            raise BackendError(f"{folder} could not be loaded as InternVL ({EXPECTED}): {err}") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        tokens = {key: getattr(self.tokenizer, key, None) or default for key, default in IMAGE_TOKENS.items()}
        context_id = self.tokenizer.convert_tokens_to_ids(tokens["context_image_token"])
        if context_id != self.model.config.image_token_id:
            raise BackendError(
                f"{folder}: the tokenizer's image token {tokens['context_image_token']!r} has id {context_id}, "
                f"but the model expects {self.model.config.image_token_id}"
            )
        processor_config = _read_json(folder, "processor_config.json")
        image_config = _read_json(folder, "preprocessor_config.json")
        size = image_config.get("size", {})
        vision_side = np.atleast_1d(self.model.config.vision_config.image_size)[0]
        self.side = int(size.get("height", vision_side)) if isinstance(size, dict) else int(size)
        self.mean = np.array(image_config.get("image_mean", IMAGENET_MEAN), np.float32)
        self.std = np.array(image_config.get("image_std", IMAGENET_STD), np.float32)
        image_block = (
            tokens["start_image_token"]
            + tokens["context_image_token"] * image_seq_length(config, processor_config)
            + tokens["end_image_token"]
        )
        self.prompt = self._chat_prompt(f"{image_block}\n{INSTRUCTION}") + PREFILL
        self.model_id = f"internvl:{os.path.basename(os.path.normpath(folder))}:{folder_fingerprint(folder)}"

    def _chat_prompt(self, user_text: str) -> str:
        messages = [{"role": "user", "content": user_text}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"  # InternVL's ChatML

    def pixel_values(self, images: list[np.ndarray]):
        tiles = [cv2.resize(image, (self.side, self.side), interpolation=cv2.INTER_AREA) for image in images]
        batch = (np.stack(tiles).astype(np.float32) / 255.0 - self.mean) / self.std
        tensor = self._torch.from_numpy(batch).permute(0, 3, 1, 2)
        return tensor.to(self.device, self.dtype)

    def describe(self, images: list[np.ndarray]) -> list[str]:
        """The model's raw continuations of "A photo of", one batch of generation per `batch_size` faces."""
        torch = self._torch
        texts: list[str] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            encoded = self.tokenizer([self.prompt] * len(chunk), return_tensors="pt", padding=True)
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=encoded["input_ids"].to(self.device),
                    attention_mask=encoded["attention_mask"].to(self.device),
                    pixel_values=self.pixel_values(chunk),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    no_repeat_ngram_size=3,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **({"cache_implementation": "static"} if self.static_cache else {}),
                )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            texts.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return texts

    def caption_batch(self, images: list[np.ndarray], facts: list[dict]) -> list[str]:
        descriptions = [guard_description(f"{PREFILL} {text.strip()}", self.guard) for text in self.describe(images)]
        return [caption_from_description(d, f) for d, f in zip(descriptions, facts)]

    def caption(self, aligned_rgb: np.ndarray, facts: dict) -> str:
        return self.caption_batch([aligned_rgb], [facts])[0]
