"""Inference time of a detector, measured fairly: warm-up calls untimed, the median of repeats, and
several detectors timed in turns so that a busy machine slows them alike (lesson 07, Figure 2)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .torch_utils import eval_mode, median_ms

__all__ = ["ROUNDS", "inference_ms_per_image", "side_by_side_ms"]


def inference_ms_per_image(
    model: nn.Module,
    images: Tensor,
    image_sizes: Optional[Sequence[tuple[int, int]]] = None,
    repeats: int = 5,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median milliseconds per image of ``model.detect(model(images), image_sizes)`` in eval mode.

    images: (B, 3, H, W) on the model's device. The first ``warmup`` calls are not timed
    (allocator, kernel selection, lazy initialisation); on a GPU each timed call starts and
    ends with a synchronisation, so the time is the device's, not the launch's.
    """
    sizes = list(image_sizes) if image_sizes is not None else [tuple(images.shape[-2:])] * len(images)
    with eval_mode(model), torch.no_grad():
        ms = median_ms(lambda: model.detect(model(images), sizes), images.device, repeats, warmup, clock)
    return ms / len(images)


#: Rounds of :func:`side_by_side_ms`: each model's time is the median of this many.
ROUNDS = 3


def side_by_side_ms(batches: Sequence[tuple[nn.Module, Tensor, Sequence[tuple[int, int]]]], rounds: int = ROUNDS,
                    timer: Callable[..., float] = inference_ms_per_image) -> list[float]:
    """Milliseconds per image of each (model, images (B, 3, H, W), image sizes), timed in turns: each
    round times every model once (:func:`inference_ms_per_image`), every other round in reverse
    order (so that no model always follows the same one), and a model's time is its median over
    the rounds. A disturbance of the machine while they run (another job on a shared CPU) then
    falls on every model alike instead of on whichever was being timed."""
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    times = [[] for _ in batches]
    for r in range(rounds):
        order = list(range(len(batches)))
        for i in order if r % 2 == 0 else order[::-1]:
            model, images, sizes = batches[i]
            times[i].append(timer(model, images, sizes))
    return [statistics.median(ms) for ms in times]
