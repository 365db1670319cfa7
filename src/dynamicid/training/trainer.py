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
            f"batch_size ({batch_size}) is the global batch, split evenly across the {processes} training "
            f"processes; set batch_size to a multiple of {processes}"
        )


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
        if config.steps < 1 or config.batch_size < 1 or config.gradient_accumulation < 1:
            raise ConfigError("steps, batch_size and gradient_accumulation must be at least 1")
        self.config = config
        self.stage = stage
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision)
        _check_launch(self.accelerator.num_processes, config.batch_size)
        self.device = self.accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        self.history: list[dict] = []
        self.stop = StopRequest()
        self.start_step = 0
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
            with open(os.path.join(folder, "trainer.json.tmp"), "w") as handle:
                json.dump({"step": step, "history": self.history, "stage": self.stage}, handle)
            os.replace(os.path.join(folder, "trainer.json.tmp"), os.path.join(folder, "trainer.json"))
            for old in self.checkpoint_dirs()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return folder

    def resume(self) -> int:
        """Continue from the newest intact checkpoint. One that cannot be loaded (cut short by a crash,
        damaged on disk) is skipped with a warning that names it and says why; older ones are tried next."""
        found = self.checkpoint_dirs() if self.config.resume else []
        skipped = []
        for folder in reversed(found):
            try:
                state = self._checkpoint_state(folder)
                self.accelerator.load_state(folder)
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
        return {"step": step, "history": history}

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
        self.weights_digests = self._agreeing_weights()
        self.save_checkpoint(c.steps)
        self.write_curves()
        return self.history

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
                f"the loss became {record['loss']} at step {step + 1}; lower learning_rate or check the data"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return record

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
