"""Lesson 1: the focal loss, and p_t / α_t."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..loss import focal_loss as _kit_focal_loss
from .checking import (
    _CUT_FROM_GRAPH,
    Feedback,
    _Case,
    _check,
    _Exercise,
    _Invalid,
    _like,
    _loss_and_gradients,
    _LossAndGradients,
    _tensor,
    _values_right_gradients_wrong,
    _wrong_only_on,
)

__all__ = ["check_focal_loss", "check_p_t_alpha_t"]


def _logits_and_targets() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random logits (16, 5) with dense 0/1 targets, and logits of ±100 (4, 3) with theirs.

    The large logits hold confidently right and confidently wrong entries of both kinds.
    """
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(16, 5, generator=g)
    targets = (torch.rand(16, 5, generator=g) < 0.25).float()
    large = torch.tensor([[100.0, -100.0, 3.0], [-100.0, 100.0, -2.0], [100.0, 100.0, 0.5], [-100.0, -100.0, 1.0]])
    large_targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    return logits, targets, large, large_targets


_LARGE = "large logits (±100)"
_MODERATE = (
    "random logits, γ = 2, α = 0.25",
    "random logits, γ = 0.5, α = 0.75",
    "random logits, γ = 0, α = 0.9",
    "no positives",
)


def _loss_cases() -> tuple[_Case, ...]:
    """(logits, targets, γ, α); the logits require grad so that gradients can be compared."""
    logits, targets, large, large_targets = _logits_and_targets()
    logits.requires_grad_()
    return (
        _Case(_MODERATE[0], (logits, targets, 2.0, 0.25)),
        _Case(_MODERATE[1], (logits, targets, 0.5, 0.75)),
        _Case(_MODERATE[2], (logits, targets, 0.0, 0.9)),
        _Case(_MODERATE[3], (logits, torch.zeros_like(targets), 2.0, 0.25)),
        _Case(_LARGE, (large.requires_grad_(), large_targets, 2.0, 0.25)),
    )


def _reference_focal_loss(logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
    return _kit_focal_loss(logits, targets, gamma, alpha)


def _run_loss(fn: Callable, args: tuple) -> _LossAndGradients:
    """The loss and its gradient with respect to the logits."""
    return _loss_and_gradients(fn(*args), args[:1], "loss (the sum over all entries)")


def _modulating(p_t: Tensor, p: Tensor, gamma: float) -> Tensor:
    return (1 - p_t) ** gamma


def _focal_variant(
    factor: Callable[[Tensor, Tensor, float], Tensor] = _modulating,
    alpha_on_positives: bool = True,
    use_alpha: bool = True,
    reduce: Callable[[Tensor], Tensor] = torch.sum,
) -> Callable:
    """The focal loss with one piece changed; ``factor(p_t, p, γ)`` is the modulating factor."""

    def variant(logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
        positive = targets == 1
        log_p_t = torch.where(positive, F.logsigmoid(logits), F.logsigmoid(-logits))
        weight_pos = alpha if alpha_on_positives else 1 - alpha
        alpha_t = torch.where(positive, weight_pos, 1 - weight_pos) if use_alpha else 1.0
        return reduce(-alpha_t * factor(log_p_t.exp(), torch.sigmoid(logits), gamma) * log_p_t)

    return variant


_FOCAL_MISTAKES = (
    (_like(_focal_variant(alpha_on_positives=False), _MODERATE),
     "Your loss weights the negatives by α; the paper weights the positives by α and the negatives by 1 − α "
     "(α_t, §3)."),
    (_like(_focal_variant(use_alpha=False), _MODERATE),
     "Your loss leaves out α_t: multiply each entry by α where y = 1 and by 1 − α where y = 0."),
    (_like(_focal_variant(factor=lambda p_t, p, gamma: p_t**gamma), _MODERATE),
     "Your modulating factor is p_t^γ; it should be (1 − p_t)^γ, which is small for the *well-classified* "
     "examples (p_t near 1) and so turns their loss down."),
    (_like(_focal_variant(factor=lambda p_t, p, gamma: (1 - p) ** gamma), _MODERATE),
     "Your modulating factor applies γ to 1 − p; it should be (1 − p_t)^γ: for a negative (y = 0) p_t = 1 − p, "
     "so its factor is p^γ."),
    (_like(_focal_variant(factor=lambda p_t, p, gamma: (1 - p_t).detach() ** gamma), _MODERATE),
     "Your loss has the right values but the wrong gradient: the modulating factor (1 − p_t)^γ is cut out of "
     "the graph (`.detach()`, `.item()` or `torch.no_grad()`). Keep it in: the gradient of the whole product "
     "trains the model (Appendix B)."),
    (_values_right_gradients_wrong, _CUT_FROM_GRAPH),
    (_like(_focal_variant(reduce=torch.mean), _MODERATE),
     "Your loss is averaged; return the sum over all entries (`.sum()`). RetinaNet divides that sum by the "
     "number of foreground anchors later (lesson 4)."),
    (_like(_focal_variant(reduce=lambda loss: -loss.sum()), _MODERATE),
     "Your loss is negative: −log p_t is ≥ 0, so FL = −α_t (1 − p_t)^γ log p_t needs its minus sign."),
    (_wrong_only_on(_LARGE, finite=False),
     "Right for moderate logits, but NaN or inf at large ones (x = ±100): there σ(x) rounds to exactly 0 or 1 "
     "and log 0 = −inf. Compute log p = `F.logsigmoid(x)` and log(1 − p) = `F.logsigmoid(-x)` — the paper fuses "
     "the sigmoid into the loss for this numerical stability (§3)."),
    (_wrong_only_on(_LARGE, finite=True),
     "Right for moderate logits, but wrong at large ones (x = ±100): σ(x) rounds to 0 or 1 there (or is clamped, "
     "e.g. to [1e-7, 1 − 1e-7]), which caps the loss of a confidently wrong example. Compute log p = "
     "`F.logsigmoid(x)` and log(1 − p) = `F.logsigmoid(-x)` instead of taking the log of a probability."),
)


def check_focal_loss(learner_fn: Callable) -> Feedback:
    """Check ``focal_loss(logits, targets, gamma, alpha) -> 0-d tensor``: Σ FL over all entries.

    logits (N, K) float; targets (N, K) float 0/1. Values *and* gradients are compared
    with :func:`fl_lab.loss.focal_loss`, including at logits of ±100.
    """
    return _check(learner_fn, _Exercise(
        "focal_loss", _reference_focal_loss, _run_loss, _loss_cases(), _FOCAL_MISTAKES,
        "Correct: values and gradients match fl_lab's focal loss, with and without positives and at logits of ±100.",
    ))


def _reference_p_t_alpha_t(logits: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Derived from cross-entropy rather than from p's definition: CE = -log p_t, so p_t = exp(-CE)
    (torch's binary CE with logits, in float64); α_t = α·y + (1 - α)·(1 - y) for y ∈ {0, 1}."""
    y = targets.double()
    p_t = torch.exp(-F.binary_cross_entropy_with_logits(logits.double(), y, reduction="none"))
    return p_t.to(logits.dtype), (alpha * y + (1 - alpha) * (1 - y)).to(logits.dtype)


def _run_p_t_alpha_t(fn: Callable, args: tuple) -> tuple[Tensor, Tensor]:
    out = fn(*args)
    shape = tuple(args[0].shape)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise _Invalid(f"Return a pair `p_t, alpha_t`, each a tensor of the logits' shape {shape}")
    return tuple(_tensor(o, shape, name).detach() for o, name in zip(out, ("p_t", "alpha_t"), strict=True))


def _p_t_alpha_t_variant(
    p_t_positive: str = "p", alpha_positive: str = "alpha", swap_outputs: bool = False
) -> Callable:
    """p_t and α_t with their cases set by name; "same" gives every entry the positive case's value."""

    def variant(logits: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        p, positive = torch.sigmoid(logits), targets == 1
        p_t = {"p": torch.where(positive, p, 1 - p), "1-p": torch.where(positive, 1 - p, p), "same": p}[p_t_positive]
        alpha_t = {
            "alpha": torch.where(positive, alpha, 1 - alpha),
            "1-alpha": torch.where(positive, 1 - alpha, alpha),
            "same": torch.full_like(p, alpha),
        }[alpha_positive]
        return (alpha_t, p_t) if swap_outputs else (p_t, alpha_t)

    return variant


_P_T_MISTAKES = (
    (_like(_p_t_alpha_t_variant(p_t_positive="1-p", alpha_positive="1-alpha")),
     "Both are swapped: p_t = p and α_t = α where y = 1 (a positive); 1 − p and 1 − α where y = 0."),
    (_like(_p_t_alpha_t_variant(p_t_positive="1-p")),
     "Your p_t is swapped: p_t = p where y = 1 (a positive) and 1 − p where y = 0. Your α_t is right."),
    (_like(_p_t_alpha_t_variant(alpha_positive="1-alpha")),
     "Your α_t is swapped: α_t = α where y = 1 (a positive) and 1 − α where y = 0. Your p_t is right."),
    (_like(_p_t_alpha_t_variant(p_t_positive="same")),
     "Your p_t equals p everywhere; for a negative (y = 0) it is 1 − p, the probability of the right answer."),
    (_like(_p_t_alpha_t_variant(alpha_positive="same")),
     "Your α_t equals α everywhere; the negatives (y = 0) get 1 − α."),
    (_like(_p_t_alpha_t_variant(swap_outputs=True)),
     "Right values, wrong order: return `p_t, alpha_t` (p_t first)."),
)


def check_p_t_alpha_t(learner_fn: Callable) -> Feedback:
    """Check ``p_t_alpha_t(logits, targets, alpha) -> (p_t, alpha_t)``, both shaped like logits (N, K)."""
    logits, targets, large, large_targets = _logits_and_targets()
    cases = (
        _Case("random logits, α = 0.25", (logits, targets, 0.25)),
        _Case("random logits, α = 0.9", (logits, targets, 0.9)),
        _Case("no positives", (logits, torch.zeros_like(targets), 0.25)),
        _Case(_LARGE, (large, large_targets, 0.25)),
    )
    return _check(learner_fn, _Exercise(
        "p_t_alpha_t", _reference_p_t_alpha_t, _run_p_t_alpha_t, cases, _P_T_MISTAKES,
        "Correct: p_t is the probability of the right answer, α_t the weight of its class — "
        "for positives and negatives alike.",
    ))
