"""Lesson 3: the prior initialisation's bias."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .checking import Feedback, _Case, _check, _Exercise, _Invalid, _like, _returned

__all__ = ["check_prior_bias"]


def _run_prior(fn: Callable, args: tuple) -> Tensor:
    out = fn(*args)
    if isinstance(out, Tensor) and out.numel() != 1:
        raise _Invalid(f"Return one number, the bias; yours returned a tensor of shape {tuple(out.shape)}")
    try:
        return torch.tensor(float(out), dtype=torch.float64)
    except (TypeError, ValueError):
        raise _Invalid(f"Return one number, the bias; yours returned {_returned(out)}") from None


def _reference_prior_bias(pi: float) -> Tensor:
    """The inverse of the sigmoid, torch's logit in float64: σ(b) = π exactly (§3.3)."""
    return torch.logit(torch.tensor(pi, dtype=torch.float64))


_PRIOR_MISTAKES = (
    (_like(lambda pi: math.log((1 - pi) / pi)),
     "Your bias has the wrong sign (or π and 1 − π swapped, which is the same thing): for π = 0.01, "
     "b = −log((1 − π)/π) ≈ −4.6, so that σ(b) = π is small."),
    (_like(lambda pi: math.log(pi)),
     "log π is close for small π but not it: b = −log((1 − π)/π) = log π − log(1 − π), the logit of π, "
     "so that σ(b) = π exactly."),
    (_like(lambda pi: -math.log10((1 - pi) / pi)),
     "Use the natural logarithm (`math.log`), not log10: σ(b) = 1 / (1 + e^−b)."),
    (_like(lambda pi: -(1 - pi) / pi),
     "Take the logarithm: b = −log((1 − π)/π), the logit of π."),
)


def check_prior_bias(learner_fn: Callable) -> Feedback:
    """Check ``prior_bias(pi) -> float``: the class-output bias b = -log((1 - π)/π) (§3.3)."""
    cases = tuple(_Case(f"π = {pi}", (pi,)) for pi in (0.01, 0.5, 0.1, 0.9, 1e-4))
    return _check(learner_fn, _Exercise(
        "prior_bias", _reference_prior_bias, _run_prior, cases, _PRIOR_MISTAKES,
        "Correct: σ(b) = π, so every class score starts at probability π (b ≈ −4.595 for π = 0.01).",
    ))
