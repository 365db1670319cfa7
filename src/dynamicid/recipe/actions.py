"""Running one stage: a command's own code with the options the run completed (in this process, or training
under its launcher on several processes), or the run's own gate and publish."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from dynamicid.errors import ConfigError
from dynamicid.options import leaves
from dynamicid.recipe.recipe import Recipe
from dynamicid.recipe.stages import COMMANDS, config_class, folder_of, options_of

logger = logging.getLogger(__name__)


def run_stage(recipe: Recipe, step, record: dict, state) -> dict:
    """Runs `step`; returns what run.json should keep of it beside its status."""
    from dynamicid.recipe import gate, publish

    if step.stage == "gate":
        return gate.run_gate(recipe, state)
    if step.stage == "publish":
        return publish.run_publish(recipe, state, step.fingerprint)
    values = options_of(recipe, step.stage)
    extra: dict = {}
    if step.stage.startswith("train."):
        values, extra = _training_start(recipe, step, record, values)
        if recipe.run.processes > 1:
            _launch(recipe, step.stage, values)
            return extra
    run_command(step.stage, values)
    return extra


def _training_start(recipe: Recipe, step, record: dict, values: dict) -> tuple[dict, dict]:
    """A training stage either resumes its own interrupted run (same fingerprint: the command resumes from
    its checkpoints), or starts a new one in a clean folder, the last one's moved aside. With [run] fine_tune
    it starts from the last weights (stage 1 all of its parts, stage 2 IMR and the KeyPointEncoder) when only
    the data changed and those weights are whole; other changes start anew, and the log says which."""
    from dynamicid.recipe.runner import move_aside
    from dynamicid.recipe.stages import training_basis

    folder = folder_of(recipe, step.stage)
    basis = training_basis(recipe, step.stage)
    if record.get("fingerprint") == step.fingerprint and record.get("status") != "done":
        init = record.get("init_weights")
    else:
        whole = record.get("status") == "done" and _weights_whole(folder, record)
        previous = move_aside(folder)
        weights = os.path.join(previous, "weights") if previous else None
        new_data = record.get("basis", {}).get("data") != basis["data"]
        same_options = record.get("basis", {}).get("options") == basis["options"]
        init = weights if recipe.run.fine_tune and whole and new_data and same_options else None
        if init:
            logger.info("run: %s continues from the last weights (%s): fine-tuning on the new data", step.stage, init)
        elif previous:
            why = "its last weights are damaged" if not whole else "its options changed" if not same_options else None
            logger.info("run: %s starts anew%s", step.stage, f" ({why})" if why else "")
    if init:
        values = values | {"init_weights": init}
    return values, {"init_weights": init, "basis": basis}


def _weights_whole(folder: str, record: dict) -> bool:
    """The stage's output is as it finished (its stamp), so its weights can be built on."""
    from dynamicid.filestamps import output_stamp

    return bool(record.get("output_stamp")) and output_stamp(folder) == record["output_stamp"]


def command_line(recipe: Recipe, stage: str, values: dict, config_file: str) -> list[str]:
    """The launcher's command for a training stage on [run] processes (GPUs with accelerate; CPU processes
    with torchrun and ACCELERATE_USE_CPU=1)."""
    processes = str(recipe.run.processes)
    if recipe.run.launcher == "torchrun":
        launcher = ["torchrun", "--nproc_per_node", processes, "-m", "dynamicid.cli"]
    else:
        launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", processes, "-m", "dynamicid.cli"]
    positional = _positional(stage)
    return [*launcher, *COMMANDS[stage], "--config", config_file, *(str(values[name]) for name in positional)]


def _launch(recipe: Recipe, stage: str, values: dict) -> None:
    positional = _positional(stage)
    config_file = os.path.join(recipe.output, ".run", f"{stage}.json")
    os.makedirs(os.path.dirname(config_file), exist_ok=True)
    with open(config_file, "w", encoding="utf-8") as handle:
        json.dump({k: v for k, v in values.items() if k not in positional}, handle, indent=2)
    argv = command_line(recipe, stage, values, config_file)
    logger.info("run: %s", " ".join(argv))
    try:
        done = subprocess.run(argv, check=False)
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} is not installed; install it, or set [run] processes = 1") from None
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(argv[:3])} ... ended with exit code {done.returncode} (its messages are above)")


def _positional(stage: str) -> list[str]:
    return [leaf.name for leaf in leaves(config_class(stage)) if leaf.meta("positional")]


def run_command(stage: str, values: dict) -> int:
    """The stage's command, run in this process as the command line runs it: its parser's defaults, the
    values as a --config file would set them, and the command's own run function (which prints its report)."""
    from dynamicid.cli import build_parser

    _, parsers = build_parser()
    path = COMMANDS[stage]
    command = next(c for c in parsers if c.name == path[-1] and c.config is config_class(stage))
    positional = _positional(stage)
    parser = parsers[command]
    parser.set_defaults(**{k: v for k, v in values.items() if k not in positional})
    args = parser.parse_args([str(values[name]) for name in positional])
    missing = command.missing(args)
    if missing:
        raise ConfigError(f"[{stage}] needs {', '.join(missing)}")
    sys.stdout.flush()
    return command.run(args)
