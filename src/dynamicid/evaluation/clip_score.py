"""CLIP-T: cosine between the CLIP image embedding and the prompt's text embedding.

Loaded from a local folder in transformers' layout (config.json, weights, tokenizer and
image-processor files), e.g. a saved openai/clip-vit-large-patch14.
"""

from __future__ import annotations

import os

import numpy as np

from dynamicid.errors import SetupError

REQUIRED = ("config.json",)


class ClipScorer:
    def __init__(self, folder: str):
        from dynamicid.hub import local_or_resolved

        folder = local_or_resolved(folder, "clip_model")
        missing = [name for name in REQUIRED if not os.path.exists(os.path.join(folder, name))]
        if not os.path.isdir(folder) or missing:
            raise FileNotFoundError(
                f"CLIP model folder {folder} is missing {', '.join(missing) or 'entirely'}: save one with "
                "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained into that folder"
            )
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as err:
            raise SetupError("CLIP-T needs transformers: pip install transformers") from err
        import torch

        self.torch = torch
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        self.name = os.path.basename(os.path.normpath(folder))

    def score(self, rgb: np.ndarray, text: str) -> float:
        torch = self.torch
        inputs = self.processor(text=[text], images=[rgb], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            image = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            words = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image = getattr(image, "pooler_output", image)
        words = getattr(words, "pooler_output", words)
        image = image / image.norm(dim=-1, keepdim=True)
        words = words / words.norm(dim=-1, keepdim=True)
        return float((image * words).sum())
