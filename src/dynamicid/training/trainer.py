"""The loop both stages share: accelerate (mixed precision, accumulation, several GPUs), checkpoints
with resume, a progress bar, losses.csv and loss.png."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dynamicid.errors import ConfigError, InputError, TrainingError, first_line
from dynamicid.training.config import TrainCommon
from dynamicid.training.data import TrainingDataError

logger = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"


def _line_plot(path: str, series: dict[str, list[tuple[int, float]]], title: str) -> None:
    """A small loss curve drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    from dynamicid.drawing import font

    width, height, margin = 720, 400, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    points = [p for values in series.values() for p in values]
    if not points:
        image.save(path)
        return
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    low, high = min(values), max(values)
    high = high if high > low else low + 1e-6
    first, last = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1

    def xy(step, value):
        return (
            margin + (step - first) / (last - first) * (width - 2 * margin),
            height - margin - (value - low) / (high - low) * (height - 2 * margin),
        )

    draw.rectangle((margin, margin, width - margin, height - margin), outline=(180, 180, 180))
    label_font = font(12)
    draw.text((margin, 12), title, fill="black", font=font(16))
    draw.text((4, margin - 6), f"{high:.4g}", fill="black", font=label_font)
    draw.text((4, height - margin - 6), f"{low:.4g}", fill="black", font=label_font)
    draw.text((margin, height - margin + 8), f"step {first}", fill="black", font=label_font)
    draw.text((width - margin - 60, height - margin + 8), f"step {last}", fill="black", font=label_font)
    colours = [(52, 152, 219), (231, 76, 60), (46, 204, 113), (155, 89, 182)]
    for index, (name, values_) in enumerate(series.items()):
        colour = colours[index % len(colours)]
        if len(values_) > 1:
            draw.line([xy(s, v) for s, v in values_], fill=colour, width=2)
        draw.text((width - margin - 150, margin + 6 + 16 * index), name, fill=colour, font=label_font)
    image.save(path)


def weights_digest(module: nn.Module) -> str:
    """A short sha256 of a module's parameters and buffers, by name."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_launch(processes: int, batch_size: int) -> None:
    """Refuse launches that would train wrongly: several processes that accelerate does not see as one
    run (each would train alone and write the same output), and a global batch that does not split evenly."""
    launched = int(os.environ.get("WORLD_SIZE") or 1)
    if launched > 1 and processes == 1:
        raise ConfigError(
            f"this process is one of {launched} (WORLD_SIZE={launched}) but accelerate sees a single process, so "
            "each would train alone and write the same output. On GPUs launch with `accelerate launch --multi_gpu "
            "--num_processes N -m dynamicid.cli train ...`; on CPU set ACCELERATE_USE_CPU=1 "
            "(`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m dynamicid.cli train ...`)"
        )
    if batch_size % processes:
        raise ConfigError(
            f"batch_size ({batch_size}) is the micro-batch of all processes together, split evenly across the "
            f"{processes} training processes; set batch_size to a multiple of {processes}"
        )


# Settings a resumed run may change: how it is watched and saved, and how fast it runs. DATA and stage-1
# weights are compared by content (the stage adds their digests), not by path.
FREE_ON_RESUME = frozenset(
    {
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_every",
        "sample_steps",
        "progress",
        "resume",
        "data_workers",
        "gradient_checkpointing",
        "mixed_precision",
        "cache_clip",
        "output",
        "data",
        "weights",
    }
)
# Settings a resumed run applies to the optimizer from its next step on, with a note.
APPLIED_ON_RESUME = ("learning_rate", "weight_decay")


def non_finite_parameters(module: nn.Module) -> list[str]:
    """Names of the trained parameters holding NaN or inf (one device sync when all are finite)."""
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if not named or bool(torch.stack([torch.isfinite(p).all() for _, p in named]).all()):
        return []
    return [name for name, p in named if not bool(torch.isfinite(p).all())]


class _Stopped(Exception):
    """Raised at a micro-batch boundary after a stop request."""


class StopRequest:
    """While the loop runs, SIGINT and SIGTERM set a flag instead of raising inside a long tensor operation
    (where Python cannot act until it returns); the loop stops at the next micro-batch boundary. A second
    Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        logger.warning(
            "stopping at the next micro-batch boundary, after saving the last whole step (Ctrl-C again stops now)"
        )

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    def __init__(self, config: TrainCommon, stage: str):
        from accelerate import Accelerator

        if config.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, not {config.mixed_precision!r}")
        self.config = config
        self.stage = stage
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision)
        _check_launch(self.accelerator.num_processes, config.batch_size)
        self.device = self.accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        self.history: list[dict] = []
        self.stop = StopRequest()
        self.start_step = 0
        self.identity: dict = {}  # what the stage adds to the run's settings (the data's and weights' digests)
        self.faces_seen = 0  # faces this process put through the model this run (`count_faces`)
        os.makedirs(config.output, exist_ok=True)

    def prepare(self, trainable: nn.Module) -> None:
        """Hand the trainable modules (fp32) and their AdamW to accelerate. Parameters the module names in
        `constant_parameters()` are kept as they are."""
        trainable.float().requires_grad_(True).to(self.device)
        constant = getattr(trainable, "constant_parameters", list)()
        for parameter in constant:
            parameter.requires_grad_(False)
        c = self.config
        trained = [p for p in trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=c.learning_rate, weight_decay=c.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(trainable, optimizer)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def places(self) -> range:
        """This process's places in each step's global batch of `batch_size`."""
        from dynamicid.training.data import local_places

        a = self.accelerator
        return local_places(self.config.batch_size, a.num_processes, a.process_index)

    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_dirs(self) -> list[str]:
        folder = os.path.join(self.config.output, CHECKPOINTS)
        if not os.path.isdir(folder):
            return []
        done = [
            d
            for d in os.listdir(folder)
            if d.startswith("step-") and os.path.isfile(os.path.join(folder, d, "trainer.json"))
        ]
        return [os.path.join(folder, d) for d in sorted(done)]

    def save_checkpoint(self, step: int) -> str:
        """accelerate writes the weights and optimizer from the main process (and each process its random
        state); trainer.json, written last by the main process once all have written, marks it complete."""
        folder = os.path.join(self.config.output, CHECKPOINTS, f"step-{step:07d}")
        self.accelerator.save_state(folder)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            state = {"step": step, "history": self.history, "stage": self.stage, "settings": self.run_settings()}
            with open(os.path.join(folder, "trainer.json.tmp"), "w") as handle:
                json.dump(state, handle)
            os.replace(os.path.join(folder, "trainer.json.tmp"), os.path.join(folder, "trainer.json"))
            for old in self.checkpoint_dirs()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return folder

    def run_settings(self) -> dict:
        """The settings that make this run what it is; a resumed run must have the same (but APPLIED_ON_RESUME)."""
        fixed = {k: v for k, v in self.config.to_dict().items() if k not in FREE_ON_RESUME}
        return fixed | self.identity

    def _start_over(self) -> None:
        """Without resume, an earlier run's checkpoints go: a later resume must not mix the two runs."""
        found = self.checkpoint_dirs()
        if found and self.is_main:
            shutil.rmtree(os.path.join(self.config.output, CHECKPOINTS))
            logger.info("starting over: removed %d checkpoints of an earlier run (resume is off)", len(found))
        self.accelerator.wait_for_everyone()

    def resume(self) -> int:
        """Continue from the newest intact checkpoint. One that cannot be loaded (cut short by a crash,
        damaged on disk, holding NaN weights) is skipped with a warning that names it and says why; older
        ones are tried next. A checkpoint of a run with other settings, or past `steps`, stops the run."""
        if not self.config.resume:
            self._start_over()
        found = self.checkpoint_dirs() if self.config.resume else []
        skipped = []
        for folder in reversed(found):
            try:
                state = self._checkpoint_state(folder)
                self.accelerator.load_state(folder)
                bad = non_finite_parameters(self.unwrapped())
                if bad:
                    raise InputError(f"{len(bad)} of its weights hold NaN or inf (first {bad[0]})")
            except TrainingDataError:
                raise
            except Exception as err:  # accelerate, torch and safetensors each raise their own kinds
                skipped.append(folder)
                logger.warning(
                    "skipping checkpoint %s: it cannot be loaded (%s); trying an older one", folder, first_line(err)
                )
                continue
            self.history = state["history"]
            self.start_step = state["step"]
            self._apply_changed(state["settings"])
            self.log(
                f"resumed from {folder} at step {self.start_step}"
                + (f" (skipped {len(skipped)} damaged: {', '.join(map(os.path.basename, skipped))})" if skipped else "")
            )
            return self.start_step
        if skipped:
            raise TrainingDataError(
                f"no checkpoint in {os.path.dirname(skipped[0])} can be loaded "
                f"({len(skipped)} tried, see the warnings above); delete them or set resume to false (--no-resume) "
                "to start over"
            )
        return 0

    def _checkpoint_state(self, folder: str) -> dict:
        path = os.path.join(folder, "trainer.json")
        try:
            with open(path) as handle:
                state = json.load(handle)
            step, history = int(state["step"]), list(state["history"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"trainer.json is damaged: {err}") from None
        if state.get("stage") != self.stage:
            raise TrainingDataError(
                f"{folder} is a {state.get('stage')} checkpoint, not {self.stage}; use another output folder"
            )
        if step > self.config.steps:
            raise TrainingDataError(
                f"{self.config.output} has already trained {step} steps, more than the {self.config.steps} asked "
                f"(its checkpoint {os.path.basename(folder)}); set steps to {step} or more to continue this run, "
                "or resume to false (--no-resume) to start over"
            )
        settings = state.get("settings") or {}  # checkpoints older than the record have none
        self._check_same_run(folder, settings)
        return {"step": step, "history": history, "settings": settings}

    def _check_same_run(self, folder: str, saved: dict) -> None:
        now = self.run_settings()
        differ = [
            f"{key} {saved[key]!r} -> {now.get(key)!r}"
            for key in sorted(saved)
            if key not in APPLIED_ON_RESUME and saved[key] != now.get(key)
        ]
        if differ:
            raise TrainingDataError(
                f"{folder} was trained with other settings than this run: {'; '.join(differ)}. A rerun continues "
                "the same run only: use the earlier values, another output folder, or resume false (--no-resume) "
                "to start over here (its checkpoints are removed)"
            )

    def _apply_changed(self, saved: dict) -> None:
        """A new learning rate or weight decay applies from the next step (the loaded optimizer had the old)."""
        for key, group_key in zip(APPLIED_ON_RESUME, ("lr", "weight_decay")):
            value = getattr(self.config, key)
            if key in saved and saved[key] != value:
                for group in self.optimizer.param_groups:
                    group[group_key] = value
                self.log(f"note: {key} changed from {saved[key]} to {value}; it applies from this step on")

    def log(self, text: str) -> None:
        """A message from the main process only (each of several GPUs runs this loop)."""
        if self.is_main:
            logger.info(text)

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self, loss_of: Callable[[int], tuple[torch.Tensor, dict]], on_sample: Callable[[int], None] | None = None
    ) -> list[dict]:
        """`loss_of(micro_step)` gives (loss, extra logs) for this process's share of one micro-batch, through
        `self.model` (the prepared module, whose backward averages gradients across processes); micro-steps
        are numbered step * accumulation + k, so data and noise depend only on the step. Ctrl-C or SIGTERM
        stops at the next micro-batch boundary: the last whole step is saved, then KeyboardInterrupt."""
        c = self.config
        start = self.resume()
        bar = None
        if c.progress and self.is_main:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=start, unit="step", desc=self.stage, dynamic_ncols=True)
        self.model.train()
        cpu_began = time.process_time()
        with self.stop:
            try:
                for step in range(start, c.steps):
                    self._one_step(loss_of, on_sample, step, bar)
            except _Stopped:
                self._save_on_stop(start)
                raise KeyboardInterrupt from None
            finally:
                if bar is not None:
                    bar.close()
        self.processes_cpu_seconds = self._gathered(round(time.process_time() - cpu_began, 3))
        self.processes_faces = self._gathered(self.faces_seen)
        self.weights_digests = self._agreeing_weights()
        self.save_checkpoint(c.steps)
        self.write_curves()
        return self.history

    def count_faces(self, count: int) -> None:
        """A loss function says how many faces of its micro-batch this process put through the model, so the
        run records each process's share of the work (`processes_faces`)."""
        self.faces_seen += count

    def _one_step(self, loss_of, on_sample, step: int, bar) -> None:
        c = self.config
        began = time.perf_counter()
        record = {"step": step + 1} | self._step(loss_of, step)
        record["seconds"] = time.perf_counter() - began
        self.history.append(record)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k not in ("step", "seconds")})
            bar.update(1)
        if c.checkpoint_every and (step + 1) % c.checkpoint_every == 0 and step + 1 < c.steps:
            self.save_checkpoint(step + 1)
            self.write_curves()
        if on_sample is not None and c.sample_every and (step + 1) % c.sample_every == 0:
            self._sample(on_sample, step + 1)

    def _save_on_stop(self, start: int) -> None:
        """After a stop request: the partial step's gradients are dropped and the last whole step saved (unless
        it already is), so the rerun continues exactly."""
        self.optimizer.zero_grad(set_to_none=True)
        done = len(self.history) and self.history[-1]["step"]
        if done > start and not os.path.isfile(
            os.path.join(self.config.output, CHECKPOINTS, f"step-{done:07d}", "trainer.json")
        ):
            self.save_checkpoint(done)
            self.write_curves()
        self.log(f"stopped after step {done}; rerun the same command to continue from there")

    def _stop_requested(self) -> bool:
        """Whether any process was asked to stop (every process must stop at the same boundary)."""
        asked = self.stop.signal is not None
        if self.accelerator.num_processes == 1:
            return asked
        flag = torch.tensor([float(asked)], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _step(self, loss_of: Callable[[int], tuple[torch.Tensor, dict]], step: int) -> dict:
        """One optimizer step over `gradient_accumulation` micro-batches. The logged loss is the mean over
        every process (the global batch's), so all processes see the same value and stop together."""
        c = self.config
        totals: dict[str, float] = {}
        for k in range(c.gradient_accumulation):
            if self._stop_requested():
                raise _Stopped
            last = k == c.gradient_accumulation - 1
            context = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with context, self.accelerator.autocast():
                loss, logs = loss_of(step * c.gradient_accumulation + k)
                self.accelerator.backward(loss / c.gradient_accumulation)
            for key, value in {"loss": loss.detach(), **logs}.items():
                totals[key] = totals.get(key, 0.0) + float(value) / c.gradient_accumulation
        local = torch.tensor(list(totals.values()), dtype=torch.float64, device=self.device)
        means = self.accelerator.reduce(local, reduction="mean") if self.accelerator.num_processes > 1 else local
        record = dict(zip(totals, means.tolist()))
        if not math.isfinite(record["loss"]):
            raise TrainingError(
                f"the loss became {record['loss']} at step {step + 1}, so that step was not taken and nothing from it "
                f"is saved. {self._advice()}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        bad = non_finite_parameters(self.unwrapped())
        if bad:
            raise TrainingError(
                f"step {step + 1} made {len(bad)} weights NaN or inf (first {bad[0]}): the update was too large, most "
                f"likely learning_rate {self.config.learning_rate:g} is too high. Nothing from this step is saved. "
                + self._advice()
            )
        return record

    def _advice(self) -> str:
        names = [os.path.basename(d) for d in self.checkpoint_dirs()]
        since = f"from {names[-1]}" if names else "from the start (no checkpoint yet)"
        advice = (
            f"Lower learning_rate (now {self.config.learning_rate:g}; --learning-rate) or check the data, and "
            f"rerun: it continues {since} with the new rate."
        )
        made_now = [n for n in names if int(n.split("-")[1]) > self.start_step]
        if made_now:  # saved by this run, at the rate that failed: their weights may already be too large
            advice += (
                f" If that fails too, remove {', '.join(made_now)} (saved at this rate) to continue from step "
                f"{self.start_step}, or start over with resume false (--no-resume)."
            )
        return advice

    def _sample(self, on_sample: Callable[[int], None], step: int) -> None:
        """The main process samples; the others wait for it at a barrier."""
        if self.is_main:
            self.model.eval()
            on_sample(step)
            self.model.train()
        self.accelerator.wait_for_everyone()

    def _gathered(self, value) -> list:
        if self.accelerator.num_processes == 1:
            return [value]
        from accelerate.utils import gather_object

        return list(gather_object([value]))

    def _agreeing_weights(self) -> list[str]:
        """Each process's digest of the trained weights. They must agree: processes that drifted apart
        would make the saved weights depend on which process wrote them."""
        digests = self._gathered(weights_digest(self.unwrapped()))
        if len(set(digests)) > 1:
            raise TrainingError(
                f"the {len(digests)} training processes hold different weights after step {self.config.steps} "
                f"(digests {', '.join(digests)}); this is a bug, please report it with the launch command"
            )
        return digests

    def write_curves(self) -> None:
        if not self.is_main or not self.history:
            return
        keys = [k for k in self.history[-1] if k not in ("step", "seconds")]
        with open(os.path.join(self.config.output, "losses.csv"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "seconds", *keys], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.history)
        series = {k: [(r["step"], r[k]) for r in self.history if k in r] for k in keys}
        _line_plot(os.path.join(self.config.output, "loss.png"), series, f"dynamicid train {self.stage}")
