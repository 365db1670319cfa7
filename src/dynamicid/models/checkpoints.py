"""Weights: the authors' pickles (SAA.bin, IMR.bin, key_point_encoder.bin) and our safetensors.

Authors' layout (method spec section 7):
  SAA.bin                {"proj_module": face encoder state dict, "SAA_module": processors state dict}
  IMR.bin                IMR state dict
  key_point_encoder.bin  KeyPointEncoder state dict
Ours, one folder:
  face_encoder.safetensors, saa.safetensors, imr.safetensors, keypoint_encoder.safetensors
  (the same keys as the authors'), plus dynamicid.json with the configurations.
The pickles are read with torch.load(weights_only=True): no code in them runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dynamicid.models.face_encoder import FaceEncoder, FaceEncoderConfig
from dynamicid.models.imr import IMR, IMRConfig, KeyPointEncoder
from dynamicid.models.saa import DynamicIDAttention, processor_layout

AUTHORS_FILES = {"saa": "SAA.bin", "imr": "IMR.bin", "keypoint": "key_point_encoder.bin"}
OUR_FILES = {
    "face_encoder": "face_encoder.safetensors",
    "saa": "saa.safetensors",
    "imr": "imr.safetensors",
    "keypoint": "keypoint_encoder.safetensors",
}
CONFIG_FILE = "dynamicid.json"

# Stable Diffusion 1.5's UNet (public config), for checking SAA files without the model's weights.
SD15_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


class CheckpointError(ValueError):
    pass


def check_state_dict(module: nn.Module, state: dict, what: str) -> None:
    """Raise a CheckpointError that names missing, unexpected and wrongly shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{title}: {shown}")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))


def load_strict(module: nn.Module, state: dict, what: str) -> nn.Module:
    check_state_dict(module, state, what)
    module.load_state_dict(state, strict=True)
    return module


def read_pickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a loadable weights file: {err}") from None


def sd15_layout():
    """The processor layout of SD1.5, built on the meta device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    return processor_layout(unet)


@dataclass
class DynamicIDWeights:
    face_encoder: FaceEncoder | None = None
    attention: DynamicIDAttention | None = None
    imr: IMR | None = None
    keypoint_encoder: KeyPointEncoder | None = None

    def configs(self) -> dict:
        out = {}
        if self.face_encoder is not None:
            out["face_encoder"] = self.face_encoder.config.to_dict()
        if self.attention is not None:
            out["saa"] = {"rank": self.attention.rank, "processors": self.attention.names}
        if self.imr is not None:
            out["imr"] = self.imr.config.to_dict()
        if self.keypoint_encoder is not None:
            out["keypoint"] = {"out_dim": self.keypoint_encoder.out_dim, "base": self.keypoint_encoder.base}
        return out


def load_authors(folder: str, layout=None, face_config: FaceEncoderConfig | None = None) -> DynamicIDWeights:
    """Read whichever of SAA.bin, IMR.bin and key_point_encoder.bin the folder holds."""
    present = {key: os.path.join(folder, name) for key, name in AUTHORS_FILES.items() if os.path.isfile(os.path.join(folder, name))}
    if not present:
        raise CheckpointError(f"{folder} holds none of {', '.join(AUTHORS_FILES.values())}")
    weights = DynamicIDWeights()
    if "saa" in present:
        blob = read_pickle(present["saa"])
        if not isinstance(blob, dict) or set(blob) != {"proj_module", "SAA_module"}:
            keys = sorted(blob)[:6] if isinstance(blob, dict) else type(blob).__name__
            raise CheckpointError(f"{present['saa']} must hold exactly 'proj_module' and 'SAA_module', found {keys}")
        config = face_config or FaceEncoderConfig(id_dim=blob["proj_module"]["proj.0.weight"].shape[1])
        weights.face_encoder = load_strict(FaceEncoder(config), blob["proj_module"], f"{present['saa']} proj_module")
        rank = _lora_rank(blob["SAA_module"])
        attention = DynamicIDAttention(layout or sd15_layout(), rank=rank)
        weights.attention = load_strict(attention, blob["SAA_module"], f"{present['saa']} SAA_module")
    if "imr" in present:
        state = read_pickle(present["imr"])
        weights.imr = load_strict(IMR(IMRConfig(depth=IMR.depth_of(state))), state, present["imr"])
    if "keypoint" in present:
        weights.keypoint_encoder = load_strict(KeyPointEncoder(), read_pickle(present["keypoint"]), present["keypoint"])
    return weights


def _lora_rank(state: dict) -> int:
    for key, tensor in state.items():
        if key.endswith("to_q_lora.down.weight"):
            return tensor.shape[0]
    raise CheckpointError("SAA_module has no LoRA weights ('{i}.to_q_lora.down.weight')")


def save_authors(weights: DynamicIDWeights, folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    written = []
    if weights.face_encoder is not None and weights.attention is not None:
        path = os.path.join(folder, AUTHORS_FILES["saa"])
        torch.save({"proj_module": weights.face_encoder.state_dict(), "SAA_module": weights.attention.state_dict()}, path)
        written.append(path)
    for key, module in (("imr", weights.imr), ("keypoint", weights.keypoint_encoder)):
        if module is not None:
            path = os.path.join(folder, AUTHORS_FILES[key])
            torch.save(module.state_dict(), path)
            written.append(path)
    return written


def save_ours(weights: DynamicIDWeights, folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    written = []
    modules = {"face_encoder": weights.face_encoder, "saa": weights.attention, "imr": weights.imr, "keypoint": weights.keypoint_encoder}
    for key, module in modules.items():
        if module is None:
            continue
        path = os.path.join(folder, OUR_FILES[key])
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, path, metadata={"format": "pt", "dynamicid": key})
        written.append(path)
    with open(os.path.join(folder, CONFIG_FILE), "w") as handle:
        json.dump(weights.configs(), handle, indent=2)
    written.append(os.path.join(folder, CONFIG_FILE))
    return written


def load_ours(folder: str, layout=None) -> DynamicIDWeights:
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{folder} is not a dynamicid weights folder: {CONFIG_FILE} is missing")
    with open(config_path) as handle:
        configs = json.load(handle)
    weights = DynamicIDWeights()

    def state(key: str) -> dict:
        path = os.path.join(folder, OUR_FILES[key])
        if not os.path.isfile(path):
            raise CheckpointError(f"{CONFIG_FILE} lists {key} but {OUR_FILES[key]} is missing in {folder}")
        return load_file(path)

    if "face_encoder" in configs:
        module = FaceEncoder(FaceEncoderConfig(**configs["face_encoder"]))
        weights.face_encoder = load_strict(module, state("face_encoder"), OUR_FILES["face_encoder"])
    if "saa" in configs:
        attention = DynamicIDAttention(layout or sd15_layout(), rank=configs["saa"]["rank"])
        if configs["saa"].get("processors") and configs["saa"]["processors"] != attention.names:
            raise CheckpointError("saa.safetensors was made for a UNet with a different attention layout")
        weights.attention = load_strict(attention, state("saa"), OUR_FILES["saa"])
    if "imr" in configs:
        weights.imr = load_strict(IMR(IMRConfig(**configs["imr"])), state("imr"), OUR_FILES["imr"])
    if "keypoint" in configs:
        weights.keypoint_encoder = load_strict(KeyPointEncoder(**configs["keypoint"]), state("keypoint"), OUR_FILES["keypoint"])
    return weights


def load_weights(folder: str, layout=None) -> DynamicIDWeights:
    """Our safetensors folder or the authors' .bin files, whichever the folder holds."""
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return load_ours(folder, layout)
    if any(os.path.isfile(os.path.join(folder, name)) for name in AUTHORS_FILES.values()):
        return load_authors(folder, layout)
    raise CheckpointError(
        f"no DynamicID weights in {folder!r}: put our safetensors folder there (with {CONFIG_FILE}) "
        f"or the authors' {', '.join(AUTHORS_FILES.values())}"
    )


def convert(source: str, target: str, to: str = "ours", layout=None) -> list[str]:
    """authors -> ours (default), or ours -> authors."""
    if to == "ours":
        return save_ours(load_authors(source, layout), target)
    if to == "authors":
        return save_authors(load_ours(source, layout), target)
    raise ValueError(f"--to must be 'ours' or 'authors', not {to!r}")
