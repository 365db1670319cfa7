"""`dynamicid train anchor` and `dynamicid train reconfig`. Command modules print their report to stdout;
the library logs."""

from __future__ import annotations

import os

from dynamicid.options import Command, config_from
from dynamicid.training.config import AnchorConfig, ReconfigConfig


def _report(stage: str, config, result: dict) -> int:
    if not result["main"]:
        return 0  # on several processes, the main one reports
    history = result["history"]
    print(f"\ntrain {stage}: {len(history)} steps, loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}")
    for name, path in result["paths"].items():
        print(f"  {name:<16} {path}")
    print(f"  loss curve       {os.path.join(config.output, 'loss.png')}")
    return 0


def run_anchor(args) -> int:
    from dynamicid.training import stages

    config = config_from(args, AnchorConfig)
    return _report("anchor", config, stages.train_anchor(config))


def run_reconfig(args) -> int:
    from dynamicid.training import stages

    config = config_from(args, ReconfigConfig)
    return _report("reconfig", config, stages.train_reconfig(config))


COMMANDS = (
    Command(
        "train",
        "train DynamicID on prep's output: `anchor` (stage 1), then `reconfig` (stage 2)",
        "Two-stage training. Several GPUs: `accelerate launch --multi_gpu --num_processes N -m dynamicid.cli "
        "train anchor ...`; --batch-size is the global batch, split across the processes.",
        stages=(
            Command(
                "anchor", "stage 1: face encoder, SAA ID projections and LoRA", config=AnchorConfig, run=run_anchor
            ),
            Command("reconfig", "stage 2: IMR and KeyPointEncoder", config=ReconfigConfig, run=run_reconfig),
        ),
    ),
)
