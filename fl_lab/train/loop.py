"""One readable training loop (paper §4.1 "Optimization"), its checkpoints and its log."""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

__all__ = ["Diverged", "load_checkpoint", "lr_multiplier", "read_log", "sgd", "train"]


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


def train(
    model: nn.Module,
    batches: Iterable,
    steps: int,
    lr: float = 0.01,
    warmup: int = 500,
    loss_kwargs: Optional[dict] = None,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    amp: str = "none",
    out: Union[None, str, Path] = None,
    checkpoint_every: int = 0,
    log_every: int = 1,
    stop_after: Optional[int] = None,
    resume_from: Optional[dict] = None,
    extra_state: Optional[dict] = None,
) -> list[dict]:
    """Train ``model`` and return one dict of numbers per step run.

    Args:
        model: a :class:`fl_lab.model.RetinaNet` (or a model with its interface: ``forward``
            returning a tuple of tensors, ``loss`` — e.g. :class:`fl_lab.compare.TorchvisionDetector`),
            or one wrapped in DistributedDataParallel.
        batches: :class:`fl_lab.data.transforms.Batch` objects, starting at the first step
            to run (e.g. a DataLoader with ``collate_fn=collate``); restarted when exhausted.
        steps, lr, warmup, momentum, weight_decay: the schedule (see :func:`lr_multiplier`).
        loss_kwargs: passed to :meth:`RetinaNet.loss` (``loss_fn``, ``normalize``, …).
        device: default: CUDA if available, else CPU. amp: "none", "bf16" or "fp16".
        out: a folder for ``last.pt`` (every ``checkpoint_every`` steps and at the end) and
            ``log.jsonl`` (every ``log_every`` steps); None keeps nothing on disk.
        stop_after: stop after this step (a checkpoint is written); resume later.
        resume_from: a checkpoint from :func:`load_checkpoint`: continue exactly from it.
        extra_state: saved into every checkpoint as is (:func:`run` saves the config and class count).

    Raises:
        Diverged: on a non-finite output or loss, naming the step; ``.history`` keeps the
            steps before it and the last checkpoint on disk is the last good one.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model.to(device).train()
    optimizer = sgd(core, lr, momentum, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_multiplier, total=steps, warmup=warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    autocast = partial(torch.autocast, device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                       enabled=amp != "none")
    start = resume_from["step"] if resume_from is not None else 0
    main = not dist.is_initialized() or dist.get_rank() == 0
    out = Path(out) if out is not None and main else None
    end = steps if stop_after is None else min(steps, stop_after)
    if end < start:  # the checkpoint would be relabelled with an earlier step and resume wrongly
        raise ValueError(f"stop_after={stop_after} is before the checkpoint's step {start}: nothing to run")
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

    def checkpoint(step: int) -> None:
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

    stream = itertools.chain(epoch, itertools.chain.from_iterable(itertools.repeat(batches)))
    history: list[dict] = []
    # Redraw at most every 2 s: in a notebook each redraw is a widget message, and a flood of them
    # overflows the kernel's output queue (its high-water mark) so that later messages are lost.
    bar = tqdm(range(start, end), initial=start, total=end, desc="train", disable=not (progress and main), mininterval=2.0)
    tick = time.perf_counter()
    try:
        for step in bar:
            batch = next(stream).to(device, non_blocking=True)
            with autocast():
                output = model(batch.images)
            if not all(bool(torch.isfinite(t).all()) for t in output if isinstance(t, torch.Tensor) and t.is_floating_point()):
                raise Diverged(_diverged_message(step, "the model's outputs", out), history, step)
            losses = core.loss(output, batch.targets, **(loss_kwargs or {}))
            if not math.isfinite(losses["total"].item()):
                raise Diverged(_diverged_message(step, "the loss", out), history, step)
            row = {"step": step, "lr": optimizer.param_groups[0]["lr"], **{k: v.item() for k, v in losses.items()}}
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            now = time.perf_counter()
            world = dist.get_world_size() if dist.is_initialized() else 1
            row["images_per_s"] = len(batch.targets) * world / (now - tick)
            tick = now
            history.append(row)
            bar.set_postfix(loss=f"{row['total']:.3f}", lr=f"{row['lr']:.2g}", img_s=f"{row['images_per_s']:.1f}")
            if log and (step % log_every == 0 or step == end - 1):
                log.write(json.dumps(row) + "\n")
                log.flush()
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < end:
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
    """A log row's step; inf (so dropped on resume) for rows without one and for a line a killed run left half-written."""
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
