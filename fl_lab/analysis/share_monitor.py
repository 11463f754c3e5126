"""Where the classification loss goes *while a detector trains*: lesson 01's simulated batch,
measured on the real model as it learns (lesson 04).

Every ``every`` iterations :class:`LossShareMonitor` takes the batch the step just trained on,
assigns its anchors as the loss does (0.5 / 0.4, §4), and splits that batch's classification
loss between positives, hard negatives and easy negatives (a negative is easy when its p_t is
above 0.5) with :func:`fl_lab.analysis.shares.loss_shares`. It reuses the step's outputs — no
extra forward pass — so its cost is one matching and one loss evaluation every ``every`` steps.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import nn

from .shares import GROUPS, LossSetting, loss_shares

__all__ = ["LossShareMonitor"]


class LossShareMonitor:
    """A training monitor (:func:`fl_lab.train.train`'s ``monitor``): every ``every`` steps, the
    share of the batch's classification loss under ``setting`` held by each of :data:`GROUPS`.

    ``rows``: one dict per measured step, ``{"step": int, "positives": float, "hard negatives":
    float, "easy negatives": float}`` (shares summing to 1). ``on_row(rows)`` is called after each
    new row (a live figure redraws there). ``seconds``: the time spent measuring (the figure's
    redraws not counted), to set against the training time.
    """

    def __init__(self, setting: LossSetting, every: int = 10, on_row: Optional[Callable[[list[dict]], None]] = None):
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.setting, self.every, self.on_row = setting, every, on_row
        self.rows: list[dict] = []
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, step: int, model: nn.Module, output, batch) -> None:
        """Measure at ``step`` if it is a multiple of ``every``. ``model``: a RetinaNet (its
        ``assign``); ``output``: its forward pass on ``batch`` (cls_logits (B, R, K))."""
        if step % self.every:
            return
        tick = time.perf_counter()
        labels = model.assign(output, batch.targets).labels  # (B, R): class, -1 background, -2 ignored
        logits = output.cls_logits.detach().float()
        shares = loss_shares(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), self.setting)
        self.rows.append({"step": step, **{group: shares[group].share for group in GROUPS}})
        self.seconds += time.perf_counter() - tick  # loss_shares reads floats back: the device is done
        if self.on_row is not None:
            self.on_row(self.rows)
