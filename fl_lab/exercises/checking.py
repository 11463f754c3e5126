"""The shared machinery of the exercise checks: run the learner's function next to a reference
on named cases, recognise known mistakes by comparing with known-wrong variants, and answer
with a :class:`Feedback`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..fast_mode import fast_mode

__all__ = ["Feedback"]


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
        return isinstance(b, tuple) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-6, equal_nan=True)


def _finite(result: Any) -> bool:
    if isinstance(result, tuple):
        return all(_finite(r) for r in result)
    return bool(torch.isfinite(result.double()).all())


def _show(result: Any) -> str:
    """A short printout: the values of a small tensor, the shape of a big one (named parts named)."""
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return ", ".join(f"{name} {_show(r)}" for name, r in zip(result._fields, result, strict=True))
    if isinstance(result, tuple):
        return "(" + ", ".join(_show(r) for r in result) + ")"
    if result.numel() > 12:
        return f"a tensor of shape {tuple(result.shape)}"
    return str([round(v, 4) for v in result.double().flatten().tolist()] if result.dim() else round(result.item(), 4))


class _Trial:
    """The learner's results on every case, beside the reference's."""

    def __init__(self, exercise: _Exercise, got: list):
        self.exercise = exercise
        self.got = dict(zip((c.name for c in exercise.cases), got, strict=True))
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
    """Grade ``learner_fn``. In fast mode (the kit's tests) the worked solution is graded too, and
    must pass: a learner's notebook shows the learner's own result, CI proves the check."""
    if fast_mode():
        from . import solutions

        proof = _grade(getattr(solutions, exercise.name), exercise)
        if not proof.passed:
            raise AssertionError(f"the worked solution of {exercise.name} fails its own check: {proof.message}")
    return _grade(learner_fn, exercise)


def _grade(learner_fn: Callable, exercise: _Exercise) -> Feedback:
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
    return _LossAndGradients(loss.detach(), tuple(torch.zeros_like(x) if g is None else g
                                                  for g, x in zip(grads, inputs, strict=True)))


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
