"""`dynamicid make-tiny-models`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.options import Command, config_from, option


@dataclass(frozen=True)
class TinyModelsConfig:
    folder: str = option(help="where to write the models (created)", positional=True)


# Every command on the tiny models, at sizes that finish in seconds on a CPU (the defaults, 512 px and
# 1000 steps, are for real models). The README's "try every command" block is this text for `tiny`, and a
# test runs it.
WALKTHROUGH = """\
dynamicid make-tiny-models {tiny}
dynamicid make-sample photos
dynamicid prep photos dataset
dynamicid train anchor dataset runs/anchor --base-model {tiny}/sd15 --clip-image-encoder {tiny}/clip-image \\
  --steps 2 --batch-size 2 --resolution 64 --lora-rank 4
dynamicid train reconfig dataset runs/reconfig --weights runs/anchor/weights --base-model {tiny}/sd15 \\
  --clip-image-encoder {tiny}/clip-image --steps 2 --resolution 64 --max-targets 2
dynamicid generate --base-model {tiny}/sd15 --clip-image-encoder {tiny}/clip-image --weights runs/reconfig/weights \\
  --person photos/astronaut/original.png --face-prompt "in a happy expression, in front view" \\
  --prompt "a photo of a person" --steps 2 --height 64 --width 64 --output generated
dynamicid eval generated scores --clip-model {tiny}/clip
"""


def walkthrough(folder: str) -> str:
    return WALKTHROUGH.format(tiny=folder.rstrip("/") or "/")


def run_make_tiny_models(args) -> int:
    from dynamicid.testing.tiny_models import make_tiny_models

    folder = config_from(args, TinyModelsConfig).folder
    for name, path in make_tiny_models(folder).items():
        print(f"{name:<11} {path}")
    print("\nTry every command on them; each finishes in seconds on a CPU (images are noise):\n")
    print(walkthrough(folder).split("\n", 1)[1], end="")
    print("dynamicid serve --tiny        # the web app and its HTTP API on tiny models made at start")
    return 0


COMMANDS = (
    Command(
        "make-tiny-models",
        "write tiny random models with the real interfaces, to smoke-test every command without weights",
        "Writes FOLDER/sd15 (a Stable Diffusion 1.5-layout diffusers folder), FOLDER/clip-image (a CLIP vision model), "
        "FOLDER/clip (a whole CLIP model, for eval --clip-model), "
        "FOLDER/dynamicid (DynamicID weights for them) and FOLDER/internvl (an InternVL captioner for prep --captioner "
        "internvl). The weights are random: images are noise, captions fall back to the measured ones.",
        TinyModelsConfig,
        run_make_tiny_models,
    ),
)
