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

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from dynamicid.atomic import write_atomic
from dynamicid.errors import ConfigError, ModelError, first_line
from dynamicid.models.face_encoder import FaceEncoder
from dynamicid.models.imr import IMR, KeyPointEncoder
from dynamicid.models.saa import DynamicIDAttention, Layout, processor_layout

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


ModuleT = TypeVar("ModuleT", bound=nn.Module)


class CheckpointError(ModelError, ValueError):
    pass


def public_config(module: Any) -> dict[str, Any]:
    """A ConfigMixin module's own settings, without diffusers' bookkeeping keys (those starting with _)."""
    return {key: value for key, value in dict(module.config).items() if not key.startswith("_")}


def check_state_dict(module: nn.Module, state: dict[str, Any], what: str) -> None:
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


def load_strict(module: ModuleT, state: dict[str, Any], what: str) -> ModuleT:
    check_state_dict(module, state, what)
    module.load_state_dict(state, strict=True)
    return module


def read_pickle(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish; fetch it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a loadable weights file ({first_line(err)}); fetch it again") from None


def sd15_layout() -> Layout:
    """The processor layout of SD1.5, built on the meta device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    return processor_layout(unet)


def unet_config_layout(path: str) -> Layout:
    """The processor layout of the UNet a diffusers config.json describes, built on the meta device."""
    from diffusers import UNet2DConditionModel

    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except OSError as err:
        raise CheckpointError(f"unet_config {path}: {err.strerror}") from None
    except ValueError as err:
        raise CheckpointError(f"unet_config {path} is not valid JSON: {err}") from None
    try:
        with torch.device("meta"):
            return processor_layout(UNet2DConditionModel.from_config(config))
    except Exception as err:  # diffusers raises several kinds for a config it cannot build
        raise CheckpointError(f"unet_config {path} does not describe a UNet diffusers can build: {err}") from None


@dataclass
class DynamicIDWeights:
    face_encoder: FaceEncoder | None = None
    attention: DynamicIDAttention | None = None
    imr: IMR | None = None
    keypoint_encoder: KeyPointEncoder | None = None
    # The face analysis (`FaceAnalysisConfig` fields) that made the training data's embeddings: generation
    # analyses reference photos the same way. None for weights that do not record it (the authors').
    face_analysis: dict[str, Any] | None = None

    def configs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.face_analysis is not None:
            out["face_analysis"] = dict(self.face_analysis)
        if self.face_encoder is not None:
            out["face_encoder"] = public_config(self.face_encoder)
        if self.attention is not None:
            out["saa"] = {"rank": self.attention.rank, "processors": self.attention.names}
        if self.imr is not None:
            out["imr"] = public_config(self.imr)
        if self.keypoint_encoder is not None:
            out["keypoint"] = {"out_dim": self.keypoint_encoder.out_dim, "base": self.keypoint_encoder.base}
        return out


def _heads_of(inner: int) -> dict[str, Any]:
    """Heads are not in the tensors: the method's 64-wide heads where the width allows, else two heads
    (the narrow test models'); the same rule the `for_width` constructors follow."""
    dim_head = 64 if inner % 64 == 0 and inner >= 128 else max(1, inner // 2)
    return {"heads": inner // dim_head, "dim_head": dim_head}


def _shape(state: dict[str, Any], key: str, what: str) -> tuple[int, ...]:
    tensor = state.get(key)
    if not isinstance(tensor, torch.Tensor):
        raise CheckpointError(f"{what} lacks the tensor {key!r}, which every file of this kind holds")
    return tuple(tensor.shape)


def face_encoder_config_of(state: dict[str, Any], what: str) -> dict[str, Any]:
    """Every width of the face encoder, read from its tensors."""
    hidden, id_dim = _shape(state, "proj.0.weight", what)
    (cross,) = _shape(state, "norm.weight", what)
    clip_dim = _shape(state, "perceiver_resampler.proj_in.weight", what)[1]
    tokens = _shape(state, "proj.2.weight", what)[0] // cross
    inner = _shape(state, "perceiver_resampler.layers.0.0.to_q.weight", what)[0]
    ff_inner = _shape(state, "perceiver_resampler.layers.0.1.1.weight", what)[0]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("perceiver_resampler.layers."))
    return dict(
        id_dim=id_dim,
        clip_dim=clip_dim,
        cross_attention_dim=cross,
        num_tokens=tokens,
        depth=depth,
        ff_mult=ff_inner // cross,
        proj_hidden=hidden,
        **_heads_of(inner),
    )


def imr_config_of(state: dict[str, Any], what: str) -> dict[str, Any]:
    """Every width of IMR, read from its tensors."""
    width, token_dim = _shape(state, "proj_in.weight", what)
    motion_dim = _shape(state, "feature_fusion.1.weight", what)[1] // 2
    queries = _shape(state, "feature_fusion.4.weight", what)[0] // width
    inner = _shape(state, "disentangleNet.0.0.to_q.weight", what)[0]
    ff_inner = _shape(state, "disentangleNet.0.2.1.weight", what)[0]
    return dict(
        token_dim=token_dim,
        motion_dim=motion_dim,
        width=width,
        num_queries=queries,
        depth=IMR.depth_of(state),
        ff_mult=ff_inner // width,
        **_heads_of(inner),
    )


def keypoint_config_of(state: dict[str, Any], what: str) -> dict[str, Any]:
    """KeyPointEncoder's base width and output width, read from its first and last convolutions."""
    base = _shape(state, "blocks.0.0.conv_block.0.weight", what)[0]
    last = max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    out_dim = _shape(state, f"blocks.{last}.1.conv_block.0.weight", what)[0]
    return {"out_dim": out_dim, "base": base}


def _state_dict(blob: Any, what: str) -> dict[str, Any]:
    """`blob` as a state dict: a dict of tensors whose values are finite."""
    if not isinstance(blob, dict):
        raise CheckpointError(f"{what} must be a state dict (names to tensors), found a {type(blob).__name__}")
    for key, value in blob.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{what}: tensor {key!r} holds NaN or infinite values; the file is damaged")
    return blob


def authors_files(folder: str) -> dict[str, str]:
    """Where the authors' files are: in `folder` itself, or else anywhere below it (a Hub snapshot may keep
    them in a subfolder). Keys as in AUTHORS_FILES."""
    present = {
        key: os.path.join(folder, name)
        for key, name in AUTHORS_FILES.items()
        if os.path.isfile(os.path.join(folder, name))
    }
    if present:
        return present
    for here, dirs, files in os.walk(folder):
        dirs.sort()
        for key, name in AUTHORS_FILES.items():
            if name in files and key not in present:
                present[key] = os.path.join(here, name)
    return present


def load_authors(
    folder: str, layout: Layout | None = None, face_config: dict[str, Any] | None = None
) -> DynamicIDWeights:
    """Read whichever of SAA.bin, IMR.bin and key_point_encoder.bin the folder holds; every width comes
    from the tensors, so files trained for any UNet load (the attention layout comes from that UNet)."""
    present = authors_files(folder)
    if not present:
        raise CheckpointError(f"{folder} holds none of {', '.join(AUTHORS_FILES.values())}")
    weights = DynamicIDWeights()
    if "saa" in present:
        path = present["saa"]
        blob = read_pickle(path)
        if not isinstance(blob, dict) or set(blob) != {"proj_module", "SAA_module"}:
            keys = sorted(map(str, blob))[:6] if isinstance(blob, dict) else f"a {type(blob).__name__}"
            raise CheckpointError(f"{path} must hold exactly 'proj_module' and 'SAA_module', found {keys}")
        projection = _state_dict(blob["proj_module"], f"{path} proj_module")
        processors = _state_dict(blob["SAA_module"], f"{path} SAA_module")
        config = face_config or face_encoder_config_of(projection, f"{path} proj_module")
        weights.face_encoder = load_strict(FaceEncoder(**config), projection, f"{path} proj_module")
        attention = DynamicIDAttention(layout or sd15_layout(), rank=_lora_rank(processors))
        weights.attention = load_strict(attention, processors, f"{path} SAA_module")
    if "imr" in present:
        state = _state_dict(read_pickle(present["imr"]), present["imr"])
        weights.imr = load_strict(IMR(**imr_config_of(state, present["imr"])), state, present["imr"])
    if "keypoint" in present:
        path = present["keypoint"]
        state = _state_dict(read_pickle(path), path)
        weights.keypoint_encoder = load_strict(KeyPointEncoder(**keypoint_config_of(state, path)), state, path)
    return weights


def _lora_rank(state: dict[str, Any]) -> int:
    for key, tensor in state.items():
        if key.endswith("to_q_lora.down.weight"):
            return tensor.shape[0]
    raise CheckpointError("SAA_module has no LoRA weights ('{i}.to_q_lora.down.weight')")


def _torch_bytes(payload: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_authors(weights: DynamicIDWeights, folder: str) -> list[str]:
    """The authors' .bin files, each written whole or not at all (`write_atomic`)."""
    written = []
    if weights.face_encoder is not None and weights.attention is not None:
        path = os.path.join(folder, AUTHORS_FILES["saa"])
        state = {"proj_module": weights.face_encoder.state_dict(), "SAA_module": weights.attention.state_dict()}
        write_atomic(path, _torch_bytes(state))
        written.append(path)
    for key, module in (("imr", weights.imr), ("keypoint", weights.keypoint_encoder)):
        if module is not None:
            path = os.path.join(folder, AUTHORS_FILES[key])
            write_atomic(path, _torch_bytes(module.state_dict()))
            written.append(path)
    return written


def save_ours(weights: DynamicIDWeights, folder: str) -> list[str]:
    """Our safetensors and dynamicid.json, each written whole or not at all (`write_atomic`), the JSON last."""
    written = []
    modules = {
        "face_encoder": weights.face_encoder,
        "saa": weights.attention,
        "imr": weights.imr,
        "keypoint": weights.keypoint_encoder,
    }
    for key, module in modules.items():
        if module is None:
            continue
        path = os.path.join(folder, OUR_FILES[key])
        state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        write_atomic(path, save_safetensors(state, metadata={"format": "pt", "dynamicid": key}))
        written.append(path)
    write_atomic(os.path.join(folder, CONFIG_FILE), json.dumps(weights.configs(), indent=2).encode())
    written.append(os.path.join(folder, CONFIG_FILE))
    return written


def _read_config(folder: str) -> dict[str, Any]:
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{folder} is not a dynamicid weights folder: {CONFIG_FILE} is missing")
    try:
        with open(config_path, encoding="utf-8") as handle:
            configs = json.load(handle)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{config_path} is not valid JSON ({err}); rewrite it with `dynamicid convert-weights` "
            "or restore it from the weights' source"
        ) from None
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        raise CheckpointError(
            f"{config_path} must be an object of objects, one per part "
            f"({', '.join(OUR_FILES)}); found {type(configs).__name__}"
        )
    unknown = sorted(set(configs) - set(OUR_FILES) - {"face_analysis"})
    if unknown:
        raise CheckpointError(
            f"{config_path}: unknown part(s) {', '.join(unknown)}; known: {', '.join(OUR_FILES)}, face_analysis"
        )
    return configs


def _build(factory: Callable[..., ModuleT], options: dict[str, Any], where: str) -> ModuleT:
    try:
        return factory(**options)
    except TypeError as err:
        raise CheckpointError(f"{where}: {err}; the file was written by another version, or edited") from None


def load_ours(folder: str, layout: Layout | None = None) -> DynamicIDWeights:
    configs = _read_config(folder)
    weights = DynamicIDWeights(face_analysis=configs.get("face_analysis"))

    def state(key: str) -> dict[str, Any]:
        path = os.path.join(folder, OUR_FILES[key])
        if not os.path.isfile(path):
            raise CheckpointError(f"{CONFIG_FILE} lists {key} but {OUR_FILES[key]} is missing in {folder}")
        try:
            return _state_dict(load_file(path), path)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error types for a cut or damaged file
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({err}); it is truncated or "
                "damaged: fetch or convert it again"
            ) from None

    where = os.path.join(folder, CONFIG_FILE)
    if "face_encoder" in configs:
        module = _build(FaceEncoder, configs["face_encoder"], f"{where} face_encoder")
        weights.face_encoder = load_strict(module, state("face_encoder"), OUR_FILES["face_encoder"])
    if "saa" in configs:
        rank = configs["saa"].get("rank")
        if not isinstance(rank, int) or rank < 1:
            raise CheckpointError(f"{where}: saa.rank must be a positive whole number, found {rank!r}")
        attention = DynamicIDAttention(layout or sd15_layout(), rank=rank)
        if configs["saa"].get("processors") and configs["saa"]["processors"] != attention.names:
            raise CheckpointError("saa.safetensors was made for a UNet with a different attention layout")
        weights.attention = load_strict(attention, state("saa"), OUR_FILES["saa"])
    if "imr" in configs:
        module = _build(IMR, configs["imr"], f"{where} imr")
        weights.imr = load_strict(module, state("imr"), OUR_FILES["imr"])
    if "keypoint" in configs:
        module = _build(KeyPointEncoder, configs["keypoint"], f"{where} keypoint")
        weights.keypoint_encoder = load_strict(module, state("keypoint"), OUR_FILES["keypoint"])
    return weights


WEIGHT_PATTERNS = ("*.bin", "*.safetensors", "*.json")


def load_weights(folder: str, layout: Layout | None = None) -> DynamicIDWeights:
    """Our safetensors folder or the authors' .bin files, whichever the folder (or Hugging Face repo id, with
    the files anywhere in it) holds."""
    from dynamicid.hub import local_or_resolved

    resolved = local_or_resolved(folder, "DynamicID weights", WEIGHT_PATTERNS)
    if resolved is None:
        raise CheckpointError("no DynamicID weights given: set weights to a folder or a Hugging Face repo id")
    folder = resolved
    if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return load_ours(folder, layout)
    if authors_files(folder):
        return load_authors(folder, layout)
    raise CheckpointError(
        f"no DynamicID weights in {folder!r}: put our safetensors folder there (with {CONFIG_FILE}) "
        f"or the authors' {', '.join(AUTHORS_FILES.values())}"
    )


def convert(source: str, target: str, to: str = "ours", layout: Layout | None = None) -> list[str]:
    """authors -> ours (default), or ours -> authors."""
    if to == "ours":
        return save_ours(load_authors(source, layout), target)
    if to == "authors":
        return save_authors(load_ours(source, layout), target)
    raise ConfigError(f"to must be 'ours' or 'authors', not {to!r}")
