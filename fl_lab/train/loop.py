"""One readable training loop (paper §4.1 "Optimization"), its checkpoints and its log."""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..torch_utils import resolve_device

__all__ = ["AMP", "Diverged", "TrainSettings", "load_checkpoint", "lr_multiplier", "read_log", "sgd", "train",
           "train_step"]


class Diverged(FloatingPointError):
    """Training produced a non-finite loss, output or weight at iteration ``step``; ``history`` holds
    the rows of the iterations run (up to the one that failed, or through it when its update did)."""

    def __init__(self, message: str, history: list[dict], step: int):
        super().__init__(message)
        self.history, self.step = history, step


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """The paper's optimiser over the model's trainable parameters."""
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


def lr_multiplier(step: int, total: int, warmup: int = 500, warmup_factor: float = 1 / 3) -> float:
    """Factor on the base learning rate at ``step`` of ``total``.

    Linear warm-up from ``warmup_factor`` to 1 over the first ``warmup`` steps (detectron's
    500 steps from 1/3), then ÷10 at 2/3 and again at 8/9 of the run (60k and 80k of 90k).
    """
    factor = 1.0
    if step < warmup:
        factor = warmup_factor + (1 - warmup_factor) * step / warmup
    return factor * 0.1 ** sum(step >= m * total for m in (2 / 3, 8 / 9))


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`train` trains: the schedule (§4.1), mixed precision, the loss and the bookkeeping.

    steps, lr, warmup, momentum, weight_decay: SGD and its schedule (see :func:`lr_multiplier`).
    amp: "none", "bf16" (autocast) or "fp16" (autocast and a gradient scaler).
    loss_kwargs: passed to the model's ``loss`` (``loss_fn``, ``normalize``, …).
    log_every: read the losses back from the device, check them and append a row to ``log.jsonl``
        every this many steps (the device is not waited on in between).
    checkpoint_every: write ``last.pt`` every this many steps (0: only at the end).
    stop_after: stop after this step (a checkpoint is written); resume later.
    time_budget_s: stop at the first log step after this many seconds of training, with a
        checkpoint, as ``stop_after`` would (``python -m fl_lab.gpu_check`` sets one; None: no limit).
    """

    steps: int
    lr: float = 0.01
    warmup: int = 500
    momentum: float = 0.9
    weight_decay: float = 1e-4
    amp: str = "none"
    loss_kwargs: dict = field(default_factory=dict)
    log_every: int = 10
    checkpoint_every: int = 0
    stop_after: Optional[int] = None
    time_budget_s: Optional[float] = None

    def __post_init__(self):
        for name, low in (("steps", 1), ("warmup", 0), ("log_every", 1), ("checkpoint_every", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {', '.join(AMP)}, got {self.amp!r}")
        if self.stop_after is not None and not (isinstance(self.stop_after, int) and self.stop_after >= 1):
            raise ValueError(f"stop_after must be an integer >= 1 or None, got {self.stop_after!r}")
        if self.time_budget_s is not None and not (isinstance(self.time_budget_s, (int, float))
                                                   and self.time_budget_s >= 0):
            raise ValueError(f"time_budget_s must be a number of seconds >= 0 or None, got {self.time_budget_s!r}")


AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_step(model: nn.Module, batch, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               loss_kwargs: dict, amp: str = "none") -> tuple[tuple, dict[str, Tensor]]:
    """One training iteration (§4.1): forward → assign anchors and compute the loss (÷ the
    foreground count) → backward → SGD step. Nothing here waits for the device.

    batch: a :class:`~fl_lab.data.transforms.Batch` on the model's device (images (B, 3, H, W)).
    Returns the model's outputs and its losses ({"cls", "box", "total", …}, 0-d tensors).
    """
    device = batch.images.device
    with torch.autocast(device.type, dtype=AMP[amp] or torch.bfloat16, enabled=AMP[amp] is not None):
        output = model(batch.images)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    losses = core.loss(output, batch.targets, **loss_kwargs)  # in float32: the loss casts its inputs
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()  # fp16: scaled so that small gradients do not underflow
    scaler.step(optimizer)  # fp16: skipped when a gradient overflowed, and the scale lowered
    scaler.update()
    return output, losses


def train(
    model: nn.Module,
    batches: Iterable,
    settings: TrainSettings,
    device: Union[None, str, torch.device] = None,
    *,
    out: Union[None, str, Path] = None,
    resume_from: Optional[dict] = None,
    extra_state: Optional[dict] = None,
    progress: bool = True,
    monitor: Optional[Callable[[int, nn.Module, tuple, object], None]] = None,
) -> list[dict]:
    """Train ``model`` as ``settings`` say and return one dict of numbers per step run.

    Args:
        model: a :class:`fl_lab.model.RetinaNet` (or a model with its interface: ``forward``
            returning a tuple of tensors, ``loss`` — e.g. :class:`fl_lab.torchvision_detectors.TorchvisionDetector`),
            or one wrapped in DistributedDataParallel.
        batches: :class:`fl_lab.data.transforms.Batch` objects, starting at the first step
            to run (e.g. a DataLoader with ``collate_fn=collate``); restarted when exhausted.
        settings: the schedule, precision, loss and bookkeeping (:class:`TrainSettings`).
        device: default: CUDA if available, else CPU.
        out: a folder for ``last.pt`` and ``log.jsonl``; None keeps nothing on disk.
        resume_from: a checkpoint from :func:`load_checkpoint`: continue exactly from it.
        extra_state: saved into every checkpoint as is (:func:`run` saves the config and class count).
        monitor: called after every step as ``monitor(step, model, output, batch)`` (the unwrapped
            model, its outputs and the batch it trained on), e.g. an
            :class:`fl_lab.analysis.LossShareMonitor`; it decides itself how often to measure.

    Each step's losses stay on the device until a log step (every ``settings.log_every`` steps,
    the last step and before each checkpoint) reads them all back at once, as nanoGPT does: a
    GPU never waits for the host in between. Rows get the images per second of their interval.
    Under torch.distributed the replicas agree at each log step on the first non-finite step and
    on running out of time, so that all of them stop together.

    Raises:
        Diverged: on a non-finite output or loss, naming the first such step (found at the
            next log step); ``.history`` keeps the steps before it, and the last checkpoint on
            disk is the last good one: none is written after a non-finite step.
    """
    s = settings
    device = resolve_device(device)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model.to(device).train()
    optimizer = sgd(core, s.lr, s.momentum, s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_multiplier, total=s.steps, warmup=s.warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=s.amp == "fp16")
    start = resume_from["step"] if resume_from is not None else 0
    main = not dist.is_initialized() or dist.get_rank() == 0
    out = Path(out) if out is not None and main else None
    end = s.steps if s.stop_after is None else min(s.steps, s.stop_after)
    if end < start:  # the checkpoint would be relabelled with an earlier step and resume wrongly
        raise ValueError(f"stop_after={s.stop_after} is before the checkpoint's step {start}: nothing to run")
    # A DataLoader draws its workers' base seed from the global RNG when iterated: do that first, then
    # restore the checkpoint's RNG state, so random draws continue exactly as in an uninterrupted run.
    epoch = iter(batches)
    if resume_from is not None:
        core.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        scaler.load_state_dict(resume_from["scaler"])
        torch.set_rng_state(resume_from["rng"]["torch"])
        if torch.cuda.is_available() and resume_from["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(resume_from["rng"]["cuda"])
    log = _open_log(out, start) if out else None
    world = dist.get_world_size() if dist.is_initialized() else 1
    history: list[dict] = []
    pending: list[tuple[int, float, int, dict[str, Tensor]]] = []  # (step, lr, images, losses) not read back yet
    first_bad = torch.tensor(-1, device=device)  # the first step with a non-finite output (kind 0) or loss (kind 1)
    bad_kind = torch.tensor(0, device=device)
    tick = began = time.monotonic()

    def read_back() -> None:
        """Wait for the device once, turn the pending steps into rows, log them; raise at a non-finite step."""
        nonlocal tick
        if not pending:
            return
        if dist.is_initialized():  # every replica stops at the earliest replica's bad step
            earliest = torch.where(first_bad >= 0, first_bad, torch.iinfo(torch.int64).max)
            dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
            first_bad.copy_(torch.where(earliest < torch.iinfo(torch.int64).max, earliest, -1))
        failed, kind = int(first_bad), int(bad_kind)  # the one host sync of the interval
        keys = list(pending[0][3])
        values = torch.stack([torch.stack([losses[k].detach().float() for k in keys])
                              for *_, losses in pending]).tolist()
        now = time.monotonic()
        rate = sum(images for _, _, images, _ in pending) / max(now - tick, 1e-9)
        tick = now
        for (step, lr, _, _), numbers in zip(pending, values, strict=True):
            if 0 <= failed <= step:
                break
            row = {"step": step, "lr": lr, **dict(zip(keys, numbers, strict=True)), "images_per_s": rate}
            history.append(row)
            if log and (step % s.log_every == 0 or step == end - 1):
                log.write(json.dumps(row) + "\n")
        if log:
            log.flush()
        pending.clear()
        if failed >= 0:
            raise Diverged(_diverged_message(failed, ("the model's outputs", "the loss")[kind], out), history, failed)
        bar.set_postfix(loss=f"{history[-1]['total']:.3f}", lr=f"{history[-1]['lr']:.2g}", img_s=f"{rate:.1f}")

    def checkpoint(step: int) -> None:
        read_back()  # never save weights a non-finite step has updated
        if out:
            weights = core.state_dict()
            # A BatchNorm's running statistics can overflow while the training-mode outputs (batch
            # statistics) stay finite: never replace the last good checkpoint with such weights.
            if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()):
                raise Diverged(_diverged_message(step - 1, "the model's weights or normalisation statistics", out),
                               history, step - 1)
            _save_atomic({"model": weights, "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                          "rng": {"torch": torch.get_rng_state(),
                                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                          "extra": extra_state or {}}, out / "last.pt")

    def out_of_time(mine: bool) -> bool:
        """Whether to stop for the time budget: any replica's clock decides for all of them."""
        if not dist.is_initialized():
            return mine
        flag = torch.tensor(int(mine), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    stream = itertools.chain(epoch, itertools.chain.from_iterable(itertools.repeat(batches)))
    # Redraw at most every 2 s: in a notebook each redraw is a widget message, and a flood of them
    # overflows the kernel's output queue (its high-water mark) so that later messages are lost.
    bar = tqdm(range(start, end), initial=start, total=end, desc="train", disable=not (progress and main),
               mininterval=2.0)
    try:
        for step in bar:
            batch = next(stream).to(device, non_blocking=True)
            lr = optimizer.param_groups[0]["lr"]
            output, losses = train_step(model, batch, optimizer, scaler, s.loss_kwargs, s.amp)
            finite = [torch.isfinite(t).all() for t in output if isinstance(t, Tensor) and t.is_floating_point()]
            outputs_ok = torch.stack(finite or [torch.ones((), dtype=torch.bool, device=device)]).all()
            newly = (first_bad < 0) & ~(outputs_ok & torch.isfinite(losses["total"]))
            first_bad.copy_(torch.where(newly, step, first_bad))
            bad_kind.copy_(torch.where(newly, outputs_ok.long(), bad_kind))
            scheduler.step()
            if monitor is not None:
                monitor(step, core, output, batch)
            pending.append((step, lr, len(batch.targets) * world, {k: v.detach() for k, v in losses.items()}))
            if step % s.log_every == 0 or step == end - 1:
                read_back()
                if s.time_budget_s is not None and out_of_time(time.monotonic() - began > s.time_budget_s):
                    end = step + 1  # stop here, as stop_after would
                    break
            if s.checkpoint_every and (step + 1) % s.checkpoint_every == 0 and step + 1 < end:
                checkpoint(step + 1)
        checkpoint(end)
    finally:  # also on Diverged: the rows logged so far reach the disk
        if log:
            log.close()
    return history


def _diverged_message(step: int, what: str, out: Optional[Path]) -> str:
    kept = f" The last good checkpoint is {out / 'last.pt'}." if out and (out / "last.pt").exists() else ""
    return (f"training diverged at iteration {step}: {what} became NaN or infinite. Usual causes: a learning "
            f"rate too high for the batch, or a class head without the prior initialisation (prior=0.01).{kept}")


def _save_atomic(state: dict, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)  # and the rename itself
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> dict:
    """A checkpoint written by :func:`train` (tensors and plain values only: ``weights_only=True``).

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is empty, cut
    short, not a checkpoint, or holds Python objects other than tensors and plain values —
    each naming the file and what to do. Such a file is never loaded another way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (the run saved none yet: start it again)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (the run was stopped while writing it?): restore it from a copy, or start "
                         "the run again")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused something: code could run on loading it
        raise ValueError(f"{path} holds Python objects besides tensors and plain values; fl_lab loads only "
                         "checkpoints it wrote and refuses this one: restore your copy of the file, or start the run "
                         "again") from None
    except (RuntimeError, EOFError, OSError) as err:  # a truncated zip, a foreign file
        raise ValueError(f"{path} is damaged or not a checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:120]}): restore it from a copy, or start the run again") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
        raise ValueError(f"{path} is not a checkpoint of fl_lab.train (no model, optimizer and step): restore it "
                         "from a copy, or start the run again")
    return state


def _open_log(out: Path, start: int):
    """log.jsonl for appending, keeping only the step rows before ``start`` (a fresh run starts it anew)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "log.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if _step_of(line) < start]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def _step_of(line: str) -> float:
    """A log row's step; inf (so dropped on resume) for rows without one and for a line a killed run left
    half-written."""
    try:
        return json.loads(line).get("step", math.inf)
    except json.JSONDecodeError:
        return math.inf


def read_log(path: Union[str, Path]) -> list[dict]:
    """The rows of a run's ``log.jsonl`` (pass the file or its run folder).

    A half-written last line (the run was killed while writing it) is left out; an
    unreadable line elsewhere raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    path = path / "log.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON ({err})") from None
    return rows
