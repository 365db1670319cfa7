"""`dynamicid eval`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from dynamicid.evaluation.config import EvalConfig
from dynamicid.options import Command, config_from


def run_eval(args) -> int:
    from dynamicid.evaluation.runner import format_summary
    from dynamicid.evaluation.runner import run_eval as run

    config = config_from(args, EvalConfig)
    result = run(config)
    print(format_summary(result.summary, config.output))
    return 0


COMMANDS = (
    Command(
        "eval",
        "score images against reference photos: FaceSim, leak margin, face-prompt agreement, CLIP-T",
        "Score images (generated or real) against reference photos of the persons they should show. INPUT is a "
        'folder of images with JSON sidecars ({"prompt", "persons": [{"name", "reference", "face_prompt"}]}), '
        "a CSV with one row per (image, person) and columns image, person, reference, face_prompt, prompt, box, or a "
        'JSON list of {"image", "prompt", "persons"}. A person with a box gets the face inside it, the others are '
        "matched greedily on cosine similarity; a person without a face scores 0. Writes scores.parquet, "
        "summary.json, report.html and report.png to OUTPUT.",
        EvalConfig,
        run_eval,
    ),
)
