"""Training RetinaNet: one short, readable loop (paper §4.1 "Optimization").

SGD with momentum 0.9 and weight decay 1e-4; a linear warm-up; the learning rate divided
by 10 at 2/3 and 8/9 of the run (the paper's 60k and 80k of 90k iterations).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["Diverged", "lr_multiplier", "sgd", "train"]


class Diverged(FloatingPointError):
    """Training produced a non-finite loss or output; ``history`` holds the steps before it."""

    def __init__(self, message: str, history: list[dict]):
        super().__init__(message)
        self.history = history


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
    device: Optional[torch.device] = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``model`` for ``steps`` iterations and return one dict of numbers per step.

    Args:
        model: a :class:`fl_lab.model.RetinaNet`.
        batches: an iterable of :class:`fl_lab.data.transforms.Batch` (e.g. a DataLoader
            with ``collate_fn=collate``); it is restarted when exhausted.
        steps, lr, warmup: the schedule (see :func:`lr_multiplier`).
        loss_kwargs: passed to :meth:`RetinaNet.loss` (``loss_fn``, ``normalize``, …).
        device: default: CUDA if available, else CPU.

    Raises:
        Diverged: on a non-finite output or loss, naming the step; ``.history`` keeps the
            steps before it.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    optimizer = sgd(model, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, steps, warmup))
    stream = itertools.chain.from_iterable(itertools.repeat(batches))
    history: list[dict] = []
    bar = tqdm(range(steps), desc="train", disable=not progress)
    for step in bar:
        batch = next(stream).to(device)
        output = model(batch.images)
        if not bool(torch.isfinite(output.cls_logits).all() and torch.isfinite(output.box_deltas).all()):
            raise Diverged(_diverged_message(step, "the model's outputs"), history)
        losses = model.loss(output, batch.targets, **(loss_kwargs or {}))
        if not math.isfinite(losses["total"].item()):
            raise Diverged(_diverged_message(step, "the loss"), history)
        row = {"step": step, "lr": optimizer.param_groups[0]["lr"], **{k: v.item() for k, v in losses.items()}}
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        scheduler.step()
        history.append(row)
        bar.set_postfix(loss=f"{row['total']:.3f}", lr=f"{row['lr']:.2g}")
    return history


def _diverged_message(step: int, what: str) -> str:
    return (f"training diverged at iteration {step}: {what} became NaN or infinite. Usual causes: a learning "
            f"rate too high for the batch, or a class head without the prior initialisation (prior=0.01).")
