"""Exercises with feedback: the learner writes the piece a lesson taught, a check grades it.

``check_<name>(learner_fn)`` runs the learner's function on random inputs and edge cases
(large logits, no foreground, all ignored, ties, exact thresholds) next to a reference —
the kit's own code where it has one — and answers with a :class:`Feedback`: correct, or
*which* mistake. Known mistakes are recognised by comparing the learner's results with
those of a known-wrong variant, so each message names exactly what went wrong.

Worked solutions live in :mod:`fl_lab.exercises.solutions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from ..analysis import cumulative_loss
from ..anchors import AnchorGenerator
from ..loss import focal_loss as _kit_focal_loss
from ..loss import ohem_mask
from ..matcher import Matcher

__all__ = [
    "Feedback",
    "check_anchors_at",
    "check_focal_loss",
    "check_loss_cdf",
    "check_match",
    "check_normalised_loss",
    "check_ohem_select",
    "check_p_t_alpha_t",
    "check_prior_bias",
    "check_sample_counts",
]


@dataclass(frozen=True)
class Feedback:
    """A check's verdict: ``passed``, and a ``message`` in plain words (✓ or ✗ when shown)."""

    passed: bool
    message: str

    def __str__(self) -> str:
        return f"{'✓' if self.passed else '✗'} {self.message}"

    def __repr__(self) -> str:  # text/plain in a notebook
        return str(self)

    def _repr_markdown_(self) -> str:
        return f"**{'✓' if self.passed else '✗'}** {self.message}"


# --------------------------------------------------------------------------------------
# The machinery shared by every exercise.
# --------------------------------------------------------------------------------------
NOT_WRITTEN = "Not written yet: replace `raise NotImplementedError` with your code, then run the check again."


class _Invalid(Exception):
    """The learner's output has the wrong form (type, shape, dtype, no gradient)."""


@dataclass(frozen=True)
class _Case:
    name: str  # in words, for the messages
    args: tuple


# A runner calls a function on a case's arguments and returns what is compared (tensors,
# or tuples of them), raising _Invalid when the output has the wrong form.
_Runner = Callable[[Callable, tuple], Any]


@dataclass(frozen=True)
class _Exercise:
    name: str
    reference: Callable
    run: _Runner
    cases: tuple[_Case, ...]
    mistakes: tuple[tuple[Callable[["_Trial"], bool], str], ...]  # (diagnose, message), first match wins
    success: str


def _fresh(args: tuple) -> tuple:
    """Copies of the tensors in ``args``: a function that edits its input in place can't spoil other runs."""
    return tuple(a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a for a in args)


def _close(a: Any, b: Any) -> bool:
    """Equal shapes and values (to float32 rounding), NaN equal to NaN; tuples compared item by item."""
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-6, equal_nan=True)


def _finite(result: Any) -> bool:
    if isinstance(result, tuple):
        return all(_finite(r) for r in result)
    return bool(torch.isfinite(result.double()).all())


def _show(result: Any) -> str:
    """A short printout: the values of a small tensor, the shape of a big one (named parts named)."""
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return ", ".join(f"{name} {_show(r)}" for name, r in zip(result._fields, result))
    if isinstance(result, tuple):
        return "(" + ", ".join(_show(r) for r in result) + ")"
    if result.numel() > 12:
        return f"a tensor of shape {tuple(result.shape)}"
    return str([round(v, 4) for v in result.double().flatten().tolist()] if result.dim() else round(result.item(), 4))


class _Trial:
    """The learner's results on every case, beside the reference's."""

    def __init__(self, exercise: _Exercise, got: list):
        self.exercise = exercise
        self.got = dict(zip((c.name for c in exercise.cases), got))
        self.expected = {c.name: exercise.run(exercise.reference, _fresh(c.args)) for c in exercise.cases}
        self.wrong = [name for name in self.got if not _close(self.got[name], self.expected[name])]

    def like(self, variant: Callable, on: Optional[Sequence[str]] = None) -> bool:
        """Wrong on some of the cases ``on`` (default all), and there exactly like ``variant``."""
        cases = [c for c in self.exercise.cases if on is None or c.name in on]
        return any(c.name in self.wrong for c in cases) and all(
            _close(self.got[c.name], self.exercise.run(variant, _fresh(c.args))) for c in cases
        )


def _like(variant: Callable, on: Optional[Sequence[str]] = None) -> Callable[[_Trial], bool]:
    """Diagnose: the learner's function behaves like the known-wrong ``variant``."""
    return lambda trial: trial.like(variant, on)


def _values_right_gradients_wrong(trial: _Trial) -> bool:
    """Diagnose: every loss value right, some gradient wrong (a piece cut out of the graph)."""
    return all(_close(trial.got[c].loss, trial.expected[c].loss) for c in trial.got)


def _wrong_only_on(case: str, finite: bool) -> Callable[[_Trial], bool]:
    """Diagnose: right everywhere except on ``case``, where the result is (not) finite."""
    return lambda trial: trial.wrong == [case] and _finite(trial.got[case]) == finite


def _check(learner_fn: Callable, exercise: _Exercise) -> Feedback:
    if not callable(learner_fn):
        example = f"`check_{exercise.name}(my_{exercise.name})`"
        return Feedback(False, f"Pass your function itself, e.g. {example}, without calling it.")
    got = []
    for case in exercise.cases:
        try:
            got.append(exercise.run(learner_fn, _fresh(case.args)))
        except NotImplementedError:
            return Feedback(False, NOT_WRITTEN)
        except _Invalid as problem:
            return Feedback(False, f"{problem} (test case: {case.name}).")
        except Exception as error:  # the learner's bug: name it, don't crash the notebook
            return Feedback(False, f"Your function raised {type(error).__name__}: {error} (test case: {case.name}).")
    trial = _Trial(exercise, got)
    if not trial.wrong:
        return Feedback(True, exercise.success)
    for diagnose, message in exercise.mistakes:
        if diagnose(trial):
            return Feedback(False, message)
    case = trial.wrong[0]
    return Feedback(
        False,
        f"Not quite: on the test case “{case}” the reference gives {_show(trial.expected[case])}, "
        f"yours gives {_show(trial.got[case])}. Compare your code with the formula above.",
    )


def _is_integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


_DTYPES = {  # kind: (in words, test)
    "float": ("a float dtype", Tensor.is_floating_point),
    "int": ("an integer dtype (torch.long)", _is_integer),
    "bool": ("dtype torch.bool", lambda t: t.dtype == torch.bool),
}


def _returned(out: Any) -> str:
    """What a wrong output is, in words; None usually means a forgotten ``return``."""
    return "None — did you forget `return`?" if out is None else f"a {type(out).__name__}"


def _tensor(out: Any, shape: tuple, what: str, kind: str = "float") -> Tensor:
    """``out`` if it is a tensor of ``shape`` and ``kind`` (a key of _DTYPES), else _Invalid."""
    if not isinstance(out, Tensor):
        raise _Invalid(f"Return {what} as a torch tensor; yours returned {_returned(out)}")
    if tuple(out.shape) != shape:
        raise _Invalid(f"Return {what} with shape {shape}; yours has shape {tuple(out.shape)}")
    wanted, test = _DTYPES[kind]
    if not test(out):
        raise _Invalid(f"Return {what} with {wanted}; yours has {out.dtype}")
    return out


class _LossAndGradients(NamedTuple):
    """What a loss exercise compares: the value, and its gradient with respect to each input."""

    loss: Tensor
    gradients: tuple[Tensor, ...]


def _loss_and_gradients(out: Any, inputs: tuple[Tensor, ...], what: str) -> _LossAndGradients:
    """The learner's loss ``out`` and its gradients with respect to ``inputs`` (zero where none reaches one)."""
    loss = _with_gradient(out, what)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    if all(g is None for g in grads):
        raise _Invalid(
            f"Your {what} is not computed from the inputs: no gradient reaches them (a result rebuilt with "
            "`torch.tensor(...)` or `.requires_grad_()` starts a new graph)"
        )
    return _LossAndGradients(loss.detach(), tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)))


_CUT_FROM_GRAPH = (
    "Your values are right but a gradient is not: part of the computation is cut out of the graph "
    "(`.detach()`, `.item()`, `float()` or `torch.no_grad()`), so training would not see it."
)


def _with_gradient(out: Any, what: str) -> Tensor:
    """A 0-d loss that still carries its gradient; ``what`` names it without an article ("loss")."""
    if isinstance(out, (float, int)):
        raise _Invalid(
            f"Return the {what} as a 0-d torch tensor, not a Python number: `.item()` and `float()` drop its gradient"
        )
    loss = _tensor(out, (), f"the {what}")
    if not loss.requires_grad:
        raise _Invalid(
            f"Your {what} has no gradient: keep it a torch computation on the inputs "
            "(no `.detach()`, `.numpy()` or `torch.no_grad()`)"
        )
    return loss


# --------------------------------------------------------------------------------------
# Lesson 1: the focal loss.
# --------------------------------------------------------------------------------------
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
    p, positive = torch.sigmoid(logits), targets == 1
    return torch.where(positive, p, 1 - p), torch.where(positive, alpha, 1 - alpha)


def _run_p_t_alpha_t(fn: Callable, args: tuple) -> tuple[Tensor, Tensor]:
    out = fn(*args)
    shape = tuple(args[0].shape)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise _Invalid(f"Return a pair `p_t, alpha_t`, each a tensor of the logits' shape {shape}")
    return tuple(_tensor(o, shape, name).detach() for o, name in zip(out, ("p_t", "alpha_t")))


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


# --------------------------------------------------------------------------------------
# Lesson 2: anchors and matching.
# --------------------------------------------------------------------------------------
def _reference_anchors_at(x: int, y: int, stride: int, size: float) -> Tensor:
    """Cell (x, y) of a one-level AnchorGenerator: the kit's own anchors and order."""
    generator = AnchorGenerator(sizes=(size,), strides=(stride,))
    rows, cols = y + 1, x + 1  # the smallest image whose grid holds this cell
    anchors = generator.gen((rows * stride, cols * stride))
    first = (y * cols + x) * generator.num_anchors_per_location
    return anchors[first : first + generator.num_anchors_per_location]


def _run_anchors(fn: Callable, args: tuple) -> Tensor:
    return _tensor(fn(*args), (9, 4), "the 9 anchors (x1, y1, x2, y2 per row)")


def _from_reference(transform: Callable[[Tensor, int, int, int], Tensor]) -> Callable:
    """A known-wrong variant made by transforming the reference's anchors of cell (x, y)."""
    return lambda x, y, stride, size: transform(_reference_anchors_at(x, y, stride, size), x, y, stride)


def _centre_size(boxes: Tensor) -> Tensor:
    return torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), dim=1)


def _twice_as_big(boxes: Tensor) -> Tensor:
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    return torch.cat((centre - size, centre + size), dim=1)


def _same_boxes_other_order(trial: _Trial) -> bool:
    def rows(t: Tensor) -> list:
        return sorted(tuple(round(v, 3) for v in row) for row in t.tolist())

    return all(rows(trial.got[name]) == rows(trial.expected[name]) for name in trial.got)


_SCALE_MAJOR = [0, 3, 6, 1, 4, 7, 2, 5, 8]  # row r·3 + s of the kit's order, listed scale by scale
_RATIOS_REVERSED = [6, 7, 8, 3, 4, 5, 0, 1, 2]

_ANCHOR_MISTAKES = (
    (_like(_from_reference(lambda a, x, y, s: a + s / 2)),
     "Your anchors are centred half a stride off: the kit (like torchvision and detectron2) centres the anchors "
     "of cell (x, y) on (x · stride, y · stride), the cell's top-left corner, not its middle."),
    (_like(_from_reference(lambda a, x, y, s: a + torch.tensor([y - x, x - y, y - x, x - y]) * s)),
     "Your anchors sit at the mirrored cell: x is the column (it moves the box right), y the row (down). "
     "The centre is (x · stride, y · stride)."),
    (_like(_from_reference(lambda a, x, y, s: _centre_size(a))),
     "Return corners x1, y1, x2, y2 (the kit's box format), not centre and size."),
    (_like(_from_reference(lambda a, x, y, s: _twice_as_big(a))),
     "Your boxes are twice too big: a box of width w centred on cx runs from cx − w/2 to cx + w/2."),
    (_like(_from_reference(lambda a, x, y, s: a[_SCALE_MAJOR])),
     "Right boxes, but scales and aspect ratios are nested the wrong way: the kit's order is aspect-ratio-major — "
     "ratio 1:2 with scales 2^0, 2^(1/3), 2^(2/3), then 1:1, then 2:1 (row = 3 · ratio index + scale index)."),
    (_like(_from_reference(lambda a, x, y, s: a[_RATIOS_REVERSED])),
     "Your first anchors are tall and your last ones wide: width and height are swapped for the ratios. In the kit "
     "an aspect ratio r is height / width, so r = 0.5 (listed first) is a *wide* box: "
     "w = side / √r, h = side · √r."),
    (_same_boxes_other_order,
     "Right boxes, wrong order. The kit lists them aspect-ratio-major, scale-minor: ratios 0.5, 1, 2 (height / "
     "width), and within each the scales 2^0, 2^(1/3), 2^(2/3)."),
)


def check_anchors_at(learner_fn: Callable) -> Feedback:
    """Check ``anchors_at(x, y, stride, size) -> (9, 4)``: the anchors of column x, row y of one level.

    Compared with :class:`fl_lab.anchors.AnchorGenerator` (offset 0: centres at
    (x · stride, y · stride)), rows in the kit's order.
    """
    cases = (
        _Case("cell (0, 0) of P3 (stride 8, size 32)", (0, 0, 8, 32)),
        _Case("cell (3, 5) of P4 (stride 16, size 64)", (3, 5, 16, 64)),
        _Case("cell (4, 1) of P5 (stride 32, size 128)", (4, 1, 32, 128)),
        _Case("cell (2, 6) of P7 (stride 128, size 512)", (2, 6, 128, 512)),
    )
    return _check(learner_fn, _Exercise(
        "anchors_at", _reference_anchors_at, _run_anchors, cases, _ANCHOR_MISTAKES,
        "Correct: your 9 anchors equal the kit's AnchorGenerator's, in the same order, on four levels.",
    ))


def _reference_match(iou: Tensor) -> Tensor:
    return Matcher(fg_iou=0.5, bg_iou=0.4, allow_low_quality=False)(iou)


def _run_match(fn: Callable, args: tuple) -> Tensor:
    num_anchors = args[0].shape[1]
    out = fn(*args)
    hint = "one entry per anchor: the best box of each anchor is the max over dim 0 (the boxes)"
    return _tensor(out, (num_anchors,), f"the matches ({hint})", kind="int").long()


def _three_way(iou: Tensor, foreground: Callable[[Tensor], Tensor], background: Callable[[Tensor], Tensor],
               codes: tuple[int, int] = (-1, -2), first_on_ties: bool = True) -> Tensor:
    """The matcher's rule with its pieces passed in: the known-wrong variants change one of them."""
    if first_on_ties:
        best_iou, best_box = iou.max(dim=0)
    else:  # the last box of a tie: take the max over the boxes in reverse order
        best_iou, flipped = iou.flip(0).max(dim=0)
        best_box = iou.shape[0] - 1 - flipped
    matches = torch.where(foreground(best_iou), best_box, codes[1])
    return torch.where(background(best_iou), codes[0], matches)


_MATCH_MISTAKES = (
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v < 0.5)),
     "Your matcher has no ignore band: anchors whose best IoU is in [0.4, 0.5) are ignored (−2), not background. "
     "The paper leaves them out of the loss (§4)."),
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v < 0.4, codes=(-2, -1))),
     "Background and ignore are swapped: background is −1 (`fl_lab.loss.BACKGROUND`), ignore is −2 (`IGNORE`)."),
    (_like(lambda iou: _three_way(iou, lambda v: v > 0.5, lambda v: v < 0.4), on=["best IoU exactly 0.5"]),
     "An anchor whose best IoU is exactly 0.5 is foreground: the rule is IoU ≥ 0.5, not > 0.5."),
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v <= 0.4), on=["best IoU exactly 0.4"]),
     "An anchor whose best IoU is exactly 0.4 is ignored: background is IoU < 0.4, not ≤ 0.4."),
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v < 0.4, first_on_ties=False),
           on=["two boxes with the same IoU"]),
     "On a tie, match the first box (the lower index), as `iou.max(dim=0)` does; yours takes the last."),
)


def _match_cases() -> tuple[_Case, ...]:
    g = torch.Generator().manual_seed(2)
    tie = torch.tensor([[0.7, 0.45, 0.2, 0.6], [0.7, 0.45, 0.1, 0.3]])
    return (
        _Case("random IoUs, 3 boxes × 12 anchors", (torch.rand(3, 12, generator=g),)),
        _Case("one box", (torch.rand(1, 7, generator=g),)),
        _Case("no foreground (every IoU < 0.4)", (0.39 * torch.rand(2, 6, generator=g),)),
        _Case("every anchor ignored (best IoU in [0.4, 0.5))", (0.4 + 0.099 * torch.rand(2, 5, generator=g),)),
        _Case("best IoU exactly 0.5", (torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.5, 0.45]]),)),
        _Case("best IoU exactly 0.4", (torch.tensor([[0.4, 0.2, 0.3], [0.1, 0.4, 0.6]]),)),
        _Case("two boxes with the same IoU", (tie,)),
    )


def check_match(learner_fn: Callable) -> Feedback:
    """Check ``match(iou) -> (A,)`` int: per anchor its best box, -1 background or -2 ignored.

    iou: (G, A) float with G ≥ 1. Compared with :class:`fl_lab.matcher.Matcher` with
    ``allow_low_quality=False`` (the paper's strict rule).
    """
    return _check(learner_fn, _Exercise(
        "match", _reference_match, _run_match, _match_cases(), _MATCH_MISTAKES,
        "Correct: foreground at IoU ≥ 0.5, background below 0.4, ignored in between, ties to the first box — "
        "the same as fl_lab's Matcher.",
    ))


# --------------------------------------------------------------------------------------
# Lesson 3: the prior initialisation.
# --------------------------------------------------------------------------------------
def _run_prior(fn: Callable, args: tuple) -> Tensor:
    out = fn(*args)
    if isinstance(out, Tensor) and out.numel() != 1:
        raise _Invalid(f"Return one number, the bias; yours returned a tensor of shape {tuple(out.shape)}")
    try:
        return torch.tensor(float(out), dtype=torch.float64)
    except (TypeError, ValueError):
        raise _Invalid(f"Return one number, the bias; yours returned {_returned(out)}") from None


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
        "prior_bias", lambda pi: -math.log((1 - pi) / pi), _run_prior, cases, _PRIOR_MISTAKES,
        "Correct: σ(b) = π, so every class score starts at probability π (b ≈ −4.595 for π = 0.01).",
    ))


# --------------------------------------------------------------------------------------
# Lesson 4: normalising the loss.
# --------------------------------------------------------------------------------------
def _reference_normalised(cls_loss_sum: Tensor, box_loss_sum: Tensor, labels: Tensor) -> Tensor:
    """As RetinaNet.loss with normalize="batch": both sums ÷ the batch's foreground count, at least 1."""
    normaliser = (labels >= 0).sum().float().clamp(min=1)
    return cls_loss_sum / normaliser + box_loss_sum / normaliser


def _run_normalised(fn: Callable, args: tuple) -> _LossAndGradients:
    """The loss and its gradients with respect to the two sums."""
    return _loss_and_gradients(fn(*args), args[:2], "normalised loss")


def _divided_by(count: Callable[[Tensor], Tensor], box_too: bool = True) -> Callable:
    def variant(cls_loss_sum: Tensor, box_loss_sum: Tensor, labels: Tensor) -> Tensor:
        n = count(labels).float().clamp(min=1)
        return cls_loss_sum / n + (box_loss_sum / n if box_too else box_loss_sum)

    return variant


_NORMALISE_MISTAKES = (
    (_like(_divided_by(lambda labels: torch.tensor(labels.numel()))),
     "You divide by all anchors; divide by the number of *foreground* anchors (label ≥ 0). Over ~100k anchors "
     "the easy negatives would otherwise shrink the loss to almost nothing (§4)."),
    (_like(_divided_by(lambda labels: (labels != -2).sum())),
     "You count background anchors too; divide by the number of *foreground* anchors only (label ≥ 0)."),
    (_like(_divided_by(lambda labels: (labels != -1).sum())),
     "You count ignored anchors (label −2) as foreground; foreground is label ≥ 0."),
    (_like(_divided_by(lambda labels: (labels > 0).sum())),
     "Class 0 is an object too: foreground is label ≥ 0, not > 0 (−1 is background, −2 ignored)."),
    (_like(_divided_by(lambda labels: (labels >= 0).sum(), box_too=False)),
     "Divide the box loss by the foreground count as well, not only the classification loss."),
    (_values_right_gradients_wrong, _CUT_FROM_GRAPH),
    (_wrong_only_on("no foreground anchors", finite=False),
     "A batch without any foreground anchor makes you divide by 0: use max(1, count) — the sums are then "
     "the background's loss alone, and 0 for the boxes."),
)


def check_normalised_loss(learner_fn: Callable) -> Feedback:
    """Check ``normalised_loss(cls_loss_sum, box_loss_sum, labels) -> 0-d tensor``.

    (cls_loss_sum + box_loss_sum) / max(1, number of anchors with label ≥ 0), labels (B, A)
    in the index form (class, -1 background, -2 ignored): as ``RetinaNet.loss``.
    """
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(-2, 3, (2, 40), generator=g)  # classes 0–2, background, ignored

    def sums(cls: float, box: float) -> tuple[Tensor, Tensor]:
        return torch.tensor(cls, requires_grad=True), torch.tensor(box, requires_grad=True)

    cases = (
        _Case("a batch of 2 images", (*sums(37.5, 12.25), labels)),
        _Case("one foreground anchor, of class 0", (*sums(4.5, 0.75), torch.tensor([[-1, 0, -2, -1]]))),
        _Case("no foreground anchors", (*sums(3.0, 0.0), torch.tensor([[-1, -2, -1], [-1, -1, -2]]))),
    )
    return _check(learner_fn, _Exercise(
        "normalised_loss", _reference_normalised, _run_normalised, cases, _NORMALISE_MISTAKES,
        "Correct: both sums divided by the batch's foreground count, and by 1 when it has none — "
        "as RetinaNet.loss does.",
    ))


# --------------------------------------------------------------------------------------
# Lesson 5: the loss CDF.
# --------------------------------------------------------------------------------------
def _run_cdf(fn: Callable, args: tuple) -> Tensor:
    return _tensor(fn(*args), tuple(args[0].shape), "the cumulative shares (one per sample)").detach()


_CDF_MISTAKES = (
    (_like(lambda losses: torch.sort(losses / losses.sum(), descending=True).values.cumsum(0)),
     "Sort from the lowest loss to the highest (ascending): the easy majority comes first, the hardest samples "
     "last, and the curve's rise at the right end shows how much of the loss they hold (Figure 4)."),
    (_like(lambda losses: torch.sort(losses).values.cumsum(0)),
     "Divide by the total loss, so that the curve ends at 1: each value is then the share of the loss held "
     "by the samples up to that one."),
    (_like(lambda losses: torch.sort(losses).values.cumsum(0) / len(losses)),
     "Divide by the total loss (`losses.sum()`), not by the number of samples: the curve must end at 1."),
    (_like(lambda losses: (losses / losses.sum()).cumsum(0)),
     "Sort the losses (ascending) before the cumulative sum."),
    (_like(lambda losses: torch.sort(losses / losses.sum()).values),
     "Take the cumulative sum (`.cumsum(0)`) of the sorted, normalised losses."),
)


def check_loss_cdf(learner_fn: Callable) -> Feedback:
    """Check ``loss_cdf(losses) -> (n,)``: losses normalised to sum 1, sorted ascending, cumulated.

    losses: (n,) float ≥ 0 with a positive sum. Compared with
    :func:`fl_lab.analysis.cumulative_loss`.
    """
    g = torch.Generator().manual_seed(5)
    heavy = torch.cat((1e-4 * torch.rand(95, generator=g), 5 + torch.rand(5, generator=g)))
    cases = (
        _Case("200 random losses", (torch.rand(200, generator=g) ** 3,)),
        _Case("a few hard samples among many easy ones", (heavy[torch.randperm(100, generator=g)],)),
        _Case("ties", (torch.tensor([2.0, 1.0, 1.0, 2.0, 1.0]),)),
        _Case("one sample", (torch.tensor([0.7]),)),
    )
    return _check(learner_fn, _Exercise(
        "loss_cdf", cumulative_loss, _run_cdf, cases, _CDF_MISTAKES,
        "Correct: the curve of Figure 4 — it rises slowly through the easy samples and ends at 1.",
    ))


# --------------------------------------------------------------------------------------
# Lesson 6: online hard example mining.
# --------------------------------------------------------------------------------------
def _reference_ohem(losses: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """fl_lab's OHEM without its NMS: far-apart dummy boxes and threshold 1 suppress nothing."""
    num_images, num_anchors = losses.shape
    x = 10.0 * torch.arange(num_anchors, dtype=losses.dtype)
    boxes = torch.stack((x, torch.zeros_like(x), x + 1, torch.ones_like(x)), dim=1).expand(num_images, -1, -1)
    return ohem_mask(losses, boxes, labels, batch_size, nms_thresh=1.0)


def _run_ohem(fn: Callable, args: tuple) -> tuple:
    """Per image: the selected anchors' losses (descending) and how many ignored ones were taken.

    Comparing these rather than the mask accepts any choice among tied losses.
    """
    losses, labels, _ = args
    mask = _tensor(fn(*_fresh(args)), tuple(losses.shape), "the selection mask", kind="bool")
    valid = labels != -2
    return tuple(
        (losses[i][mask[i] & valid[i]].sort(descending=True).values, (mask[i] & ~valid[i]).sum())
        for i in range(losses.shape[0])
    )


def _top_per_image(
    losses: Tensor,
    labels: Tensor,
    batch_size: int,
    largest: bool = True,
    skip_ignored: bool = True,
    pad_with_ignored: bool = False,
) -> Tensor:
    """Per image, ``batch_size`` anchors ranked by loss; the flags make the known mistakes."""
    valid = labels != -2 if skip_ignored else torch.ones_like(labels, dtype=torch.bool)
    ranked = losses.masked_fill(~valid, -math.inf if largest else math.inf)
    top = ranked.topk(min(batch_size, losses.shape[1]), dim=1, largest=largest).indices
    mask = torch.zeros_like(valid).scatter(1, top, True)
    return mask if pad_with_ignored else mask & valid


def _top_of_batch(losses: Tensor, labels: Tensor, batch_size: int, per_image_budget: bool) -> Tensor:
    """The hardest non-ignored anchors of the whole batch (batch_size, or batch_size per image, in all)."""
    k = batch_size * losses.shape[0] if per_image_budget else batch_size
    valid = (labels != -2).flatten()
    top = losses.flatten().masked_fill(~valid, -math.inf).topk(min(k, losses.numel())).indices
    return (torch.zeros_like(valid).scatter(0, top, True) & valid).view_as(labels)


_ACROSS_BATCH = ("Pick the hardest anchors of each image separately — `batch_size` per image — not the hardest "
                 "of the whole batch: an image with large losses would otherwise take every place (§5.1, Table 1d).")
_OHEM_MISTAKES = (
    (_like(lambda l, y, b: _top_per_image(l, y, b, largest=False)),
     "You selected the lowest losses; OHEM keeps the *highest*-loss anchors — the hard examples."),
    (_like(lambda l, y, b: _top_of_batch(l, y, b, per_image_budget=True)), _ACROSS_BATCH),
    (_like(lambda l, y, b: _top_of_batch(l, y, b, per_image_budget=False)), _ACROSS_BATCH),
    (_like(lambda l, y, b: _top_per_image(l, y, b, skip_ignored=False)),
     "Ignored anchors (label −2) must never be selected: they are not part of the loss."),
    (_like(lambda l, y, b: _top_per_image(l, y, b, pad_with_ignored=True)),
     "When an image has fewer than `batch_size` non-ignored anchors, select just those: yours fills up with "
     "ignored ones (`topk` after `masked_fill(-inf)` still returns the −inf entries — drop them with `& valid`)."),
)


def check_ohem_select(learner_fn: Callable) -> Feedback:
    """Check ``ohem_select(losses, labels, batch_size) -> (B, A)`` bool.

    Per image, the ``batch_size`` highest-loss anchors whose label is not -2 (all of them
    when there are fewer); no NMS. Compared with :func:`fl_lab.loss.ohem_mask` at NMS
    threshold 1; any choice among tied losses is accepted.
    """
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(-2, 2, (3, 30), generator=g)
    losses = torch.rand(3, 30, generator=g) * torch.tensor([[1.0], [10.0], [0.1]])  # images on different scales
    few = torch.tensor([[-2, 0, -2, -1, -2, -2, -1, -2], [-1, -1, 1, -1, -2, -1, -1, -1]])
    cases = (
        _Case("3 images, batch_size 5", (losses, labels, 5)),
        _Case("an image with every anchor ignored",
              (losses[:2, :12], torch.cat((labels[:1, :12], torch.full((1, 12), -2))), 4)),
        _Case("an image with fewer non-ignored anchors than batch_size",
              (torch.rand(2, 8, generator=g) + 2 * (few == -2), few, 4)),
        # Ties at the cut among non-ignored anchors only: which of them is taken doesn't matter.
        _Case("tied losses", (torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0, 0.0, 4.0]]),
                              torch.tensor([[-1, -2, -1, 0, -1, -1], [-1, 0, -1, -1, -2, -1]]), 2)),
        _Case("batch_size larger than the number of anchors", (losses[:, :6], labels[:, :6], 10)),
    )
    return _check(learner_fn, _Exercise(
        "ohem_select", _reference_ohem, _run_ohem, cases, _OHEM_MISTAKES,
        "Correct: per image, the hardest non-ignored anchors — the minibatch OHEM trains on (without its NMS).",
    ))


# --------------------------------------------------------------------------------------
# Lesson 7: the two-stage detector's sampled minibatch.
# --------------------------------------------------------------------------------------
def _reference_sample_counts(num_pos: int, num_neg: int, batch_size: int, positive_fraction: float) -> tuple:
    """How many positives and negatives torchvision's ``BalancedPositiveNegativeSampler`` takes."""
    labels = torch.cat((torch.ones(num_pos, dtype=torch.long), torch.zeros(num_neg, dtype=torch.long)))
    pos, neg = BalancedPositiveNegativeSampler(batch_size, positive_fraction)([labels])
    return int(pos[0].sum()), int(neg[0].sum())


def _run_counts(fn: Callable, args: tuple) -> tuple[Tensor, Tensor]:
    out = fn(*args)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise _Invalid(f"Return a pair (number of positives, number of negatives); yours returned {_returned(out)}")
    counts = []
    for value in out:
        if isinstance(value, Tensor) and value.dim() == 0 and _is_integer(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"Return the two counts as whole numbers (int); yours has a {type(value).__name__}")
        counts.append(torch.tensor(value))
    return counts[0], counts[1]


def _counts(pos_share: Callable[[int, float], int], top_up: bool = True, cap_pos: bool = True,
            cap_neg: bool = True) -> Callable:
    """The counting rule with one piece changed (the known mistakes)."""

    def variant(num_pos: int, num_neg: int, batch_size: int, positive_fraction: float) -> tuple[int, int]:
        n_pos = pos_share(batch_size, positive_fraction)
        n_pos = min(num_pos, n_pos) if cap_pos else n_pos
        n_neg = batch_size - (n_pos if top_up else pos_share(batch_size, positive_fraction))
        return n_pos, min(num_neg, n_neg) if cap_neg else n_neg

    return variant


_SHARE = lambda batch, fraction: int(batch * fraction)  # noqa: E731
_SAMPLE_MISTAKES = (
    (_like(_counts(lambda batch, fraction: int(batch * (1 - fraction)))),
     "The ratio is inverted: at most `positive_fraction` of the minibatch (1 in 4 for 0.25) may be positives; "
     "the rest are negatives — the paper's fixed 1:3 foreground : background (§1)."),
    (_like(_counts(_SHARE, cap_pos=False)),
     "You cannot sample more positives than there are: take min(num_pos, batch_size × positive_fraction)."),
    (_like(_counts(_SHARE, top_up=False)),
     "When there are too few positives, the minibatch is filled up with negatives: negatives get "
     "batch_size − (the positives actually taken), not a fixed batch_size × (1 − positive_fraction)."),
    (_like(_counts(_SHARE, cap_neg=False)),
     "You cannot sample more negatives than there are: cap them at num_neg."),
    (_like(_counts(lambda batch, fraction: math.ceil(batch * fraction))),
     "You round the positives' share up; torchvision takes int(batch_size × positive_fraction), rounding down, "
     "so the positives never exceed their fraction."),
    (_like(_counts(lambda batch, fraction: round(batch * fraction))),
     "You round the positives' share to the nearest whole number; torchvision takes int(batch_size × "
     "positive_fraction), rounding down, so the positives never exceed their fraction."),
)


def check_sample_counts(learner_fn: Callable) -> Feedback:
    """Check ``sample_counts(num_pos, num_neg, batch_size, positive_fraction) -> (n_pos, n_neg)``.

    The two-stage detector's minibatch rule (Faster R-CNN: 512 RoIs, at most 25 % positives):
    compared with torchvision's ``BalancedPositiveNegativeSampler``.
    """
    cases = (
        _Case("plenty of both (1000 positives, 5000 negatives, 512 at 0.25)", (1000, 5000, 512, 0.25)),
        _Case("few positives (20)", (20, 5000, 512, 0.25)),
        _Case("few negatives (100)", (1000, 100, 512, 0.25)),
        _Case("no positives", (0, 300, 512, 0.25)),
        _Case("the RPN's rule (256 at 0.5)", (100, 1000, 256, 0.5)),
        _Case("a share that is not whole (134 at 0.25: 33.5 positives)", (100, 1000, 134, 0.25)),
        _Case("another share that is not whole (130 at 0.25: 32.5 positives)", (100, 1000, 130, 0.25)),
    )
    return _check(learner_fn, _Exercise(
        "sample_counts", _reference_sample_counts, _run_counts, cases, _SAMPLE_MISTAKES,
        "Correct: a fixed share of positives, topped up with negatives — the sampling heuristic that the focal "
        "loss replaces by letting every anchor count.",
    ))
