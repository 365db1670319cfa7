"""`dynamicid make-tiny-models`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.options import Command, config_from, option


@dataclass(frozen=True)
class TinyModelsConfig:
    folder: str = option(help="where to write the models (created)", positional=True)


def run_make_tiny_models(args) -> int:
    from dynamicid.testing.tiny_models import make_tiny_models

    for name, path in make_tiny_models(config_from(args, TinyModelsConfig).folder).items():
        print(f"{name:<11} {path}")
    return 0


COMMANDS = (
    Command(
        "make-tiny-models",
        "write tiny random models with the real interfaces, to smoke-test every command without weights",
        "Writes FOLDER/sd15 (a Stable Diffusion 1.5-layout diffusers folder), FOLDER/clip-image (a CLIP vision model), "
        "FOLDER/dynamicid (DynamicID weights for them) and FOLDER/internvl (an InternVL captioner for prep --captioner "
        "internvl). The weights are random: images are noise, captions fall back to the measured ones.",
        TinyModelsConfig,
        run_make_tiny_models,
    ),
)
