"""Small PyTorch helpers every layer of the kit uses: which device, eval mode for a while, a timer."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

__all__ = ["eval_mode", "median_ms", "resolve_device", "sync"]


def resolve_device(name: Union[None, str, torch.device] = "auto", local_rank: int = 0) -> torch.device:
    """The device ``name`` means here: "auto" (or None) is CUDA when present (``cuda:<local_rank>``
    under torchrun), else the CPU; "cpu", "cuda" and "cuda:N" are checked against this machine.

    A CUDA device this machine lacks is a ``ValueError`` that names it and what to use instead.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or not (name == "cpu" or name == "cuda" or name.startswith("cuda:")):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device here; use --device cpu (or auto)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= count):
            raise ValueError(f"--device {name}: there is no such CUDA device here ({count} found: cuda:0 … "
                             f"cuda:{count - 1})")
    return torch.device(name)


@contextmanager
def eval_mode(model: nn.Module, device: Optional[torch.device] = None) -> Iterator[nn.Module]:
    """``model`` in eval mode (on ``device`` if given) inside the block, its train/eval mode restored
    after it, also when the block raises."""
    was_training = model.training
    if device is not None:
        model.to(device)
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU), so that a clock read after it is the device's time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int = 7, warmup: int = 2,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` untimed ones
    (allocator, kernel selection, lazy initialisation). On a GPU each timed call starts and ends with a
    synchronisation, so the time is the device's, not the launch's."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = clock()
        fn()
        sync(device)
        times.append(clock() - start)
    return 1e3 * statistics.median(times)
