"""`dynamicid convert-weights`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dynamicid.options import Command, config_from, option


@dataclass(frozen=True)
class ConvertConfig:
    source: str = option(help="the folder to read", positional=True)
    target: str = option(help="the folder to write", positional=True)
    to: str = option(
        "ours", "ours: the authors' .bin files to our safetensors; authors: back", choices=("ours", "authors")
    )
    unet_config: str | None = option(
        None, "a diffusers UNet config.json, when the weights are for a UNet not shaped like SD1.5"
    )


def run_convert(args: argparse.Namespace) -> int:
    from dynamicid.models.checkpoints import convert, unet_config_layout

    config = config_from(args, ConvertConfig)
    layout = unet_config_layout(config.unet_config) if config.unet_config else None
    for path in convert(config.source, config.target, to=config.to, layout=layout):
        print(f"wrote {path}")
    return 0


COMMANDS = (
    Command(
        "convert-weights",
        "convert DynamicID weights between the authors' .bin files and our safetensors",
        "SOURCE is a folder holding any of the authors' SAA.bin, IMR.bin and key_point_encoder.bin; TARGET receives "
        "face_encoder/saa/imr/keypoint_encoder.safetensors and dynamicid.json. With --to authors, SOURCE is our "
        "folder and TARGET receives the .bin files. Every file is checked key by key against the model; the pickles "
        "are read with torch.load(weights_only=True).",
        ConvertConfig,
        run_convert,
    ),
)
