"""`dynamicid run RECIPE`. Command modules print their report to stdout; the library logs."""

from __future__ import annotations

from dataclasses import dataclass

from dynamicid.errors import ConfigError, DynamicIDError
from dynamicid.options import Command, config_from, option
from dynamicid.recipe.recipe import STAGE_ORDER


@dataclass(frozen=True)
class RunConfig:
    recipe: str = option(help="the recipe, a TOML file (see the README's first section)", positional=True)
    dry_run: bool = option(False, "print the plan, what would run and why, and run nothing")
    from_stage: str | None = option(
        None, "start at this stage (earlier ones are left as they are)", flag="from", choices=STAGE_ORDER
    )
    until: str | None = option(None, "stop after this stage", choices=STAGE_ORDER)
    force: tuple[str, ...] = option(
        help="rerun this stage and every one after it, even if up to date (repeatable)", factory=tuple, append=True
    )


def run_recipe(args) -> int:
    import time

    from dynamicid.prep.guard import OutputLock
    from dynamicid.recipe.recipe import read_recipe
    from dynamicid.recipe.report import write_report
    from dynamicid.recipe.runner import describe, execute, plan
    from dynamicid.recipe.state import RunState

    config = config_from(args, RunConfig)
    recipe = read_recipe(config.recipe)
    for stage in (*config.force, config.from_stage, config.until):
        if stage and not recipe.has(stage):
            raise ConfigError(f"{stage} is not a stage of {config.recipe}; its stages: {', '.join(recipe.tables)}")
    unknown = [s for s in config.force if s not in STAGE_ORDER]
    if unknown:
        raise ConfigError(f"--force {unknown[0]}: the stages are {', '.join(STAGE_ORDER)}")
    state = RunState(recipe.output)
    steps = plan(recipe, state, config.force, config.from_stage, config.until)
    print(f"plan for {config.recipe} (output {recipe.output}):\n{describe(steps)}", flush=True)
    if config.dry_run:
        return 0
    started = time.perf_counter()
    with OutputLock(recipe.output, state=".run", command="dynamicid run"):
        try:
            execute(recipe, steps, state)
        finally:
            report = write_report(recipe, state.stages, _next_run(recipe, state))
    ran = [step.stage for step in steps if step.run]
    published = state.get("publish")
    if "publish" in ran and published.get("unchanged"):
        version, to = published["version"], published["to"]
        print(f"\npublish: nothing new to publish: version {version} at {to} has the same weights")
    print(
        f"\nrun: {len(ran)} stage(s) run ({', '.join(ran) or 'none: everything is up to date'}) in "
        f"{time.perf_counter() - started:.1f} s\n  record  {state.path}\n  report  {report}"
    )
    return 0


def _next_run(recipe, state) -> dict[str, str]:
    """What the next run would do with each stage, for the report."""
    from dynamicid.recipe.runner import plan

    try:
        return {step.stage: ("runs: " if step.run else "") + step.reason for step in plan(recipe, state)}
    except DynamicIDError as err:  # the target cannot be read now, say: the report still gets written
        return dict.fromkeys(recipe.tables, f"cannot tell: {err}")


COMMANDS = (
    Command(
        "run",
        "run a recipe: collect, prep, train, eval, gate and publish, redoing only what changed",
        "Runs the stages of RECIPE (a TOML file whose tables are the commands' own options) in order: collect, "
        "prep, train.anchor, train.reconfig, eval, gate, publish. Each stage's fingerprint (its options and what "
        "it reads) is kept in OUTPUT/run.json: a rerun skips what is up to date and says so, a change reruns "
        "that stage and those after it. A failed gate publishes nothing and exits 1. OUTPUT/report.html links "
        "every stage's own report.",
        RunConfig,
        run_recipe,
    ),
)
