"""The focal loss and its relatives, computed from logits (paper §3, Appendices A and B).

Every loss here treats the K classes as K independent binary problems (one sigmoid per
class, no background column), exactly as RetinaNet's classification subnet does.

Targets come in two forms, like ``torch.nn.functional.cross_entropy``:

* **dense** -- a float tensor shaped like ``logits`` ``(..., K)``, values in [0, 1]
  (0/1 one-hot rows, or soft targets);
* **index** -- an integer tensor shaped ``logits.shape[:-1]`` holding a class index per
  row, :data:`BACKGROUND` (``-1``, an all-zero row) or :data:`IGNORE` (``-2``, the row
  contributes nothing). No one-hot tensor is built for this form: every entry is first
  scored as a negative, then the one positive entry of each foreground row is swapped in.

Notation (paper §3): ``p = σ(x)``; ``p_t = p`` for a positive entry and ``1 - p`` for a
negative one; ``x_t = x`` or ``-x`` likewise, so ``p_t = σ(x_t)``. The binary kernels
below take ``z = -x_t`` (the logit measured towards the *wrong* answer) because then a
negative entry's ``z`` is its logit itself and the big ``(N, K)`` pass needs no negation.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "balanced_cross_entropy",
    "focal_loss",
    "focal_loss_of_pt",
    "focal_loss_star",
]

BACKGROUND = -1
"""Index-form target of an anchor matched to no object: all K entries are negatives."""
IGNORE = -2
"""Index-form target of an anchor in the ignore band: it adds nothing to the loss."""

_REDUCTIONS = ("none", "sum", "mean")


# --------------------------------------------------------------------------------------
# Elementwise kernels. Each maps z = -x_t to the loss of one binary entry, without α.
# They are the readable reference: autograd differentiates them. The training loop takes
# the fused path below for index targets; everything else only gathers, weights and reduces.
# --------------------------------------------------------------------------------------
def _focal_of_z(z: Tensor, gamma: float) -> Tensor:
    """FL(p_t) = -(1 - p_t)^γ log p_t with p_t = σ(-z) (eq. 4 without α).

    ``-log p_t = softplus(z)`` and ``(1 - p_t)^γ = σ(z)^γ = exp(-γ softplus(-z))``: both
    factors come from log-sigmoids, so the value and its gradient stay finite for any
    finite logit (a ``pow`` of a probability that underflows to 0 has an infinite
    derivative for γ < 1).
    """
    ce = F.softplus(z)
    if gamma == 0:
        return ce
    return ce * torch.exp(-gamma * F.softplus(-z))


def _focal_star_of_z(z: Tensor, gamma: float, beta: float) -> Tensor:
    """FL*(x_t) = -log σ(γ x_t + β) / γ (Appendix A) = softplus(γ z - β) / γ."""
    return F.softplus(gamma * z - beta) / gamma


def _focal_dense(x: Tensor, t: Tensor, gamma: float) -> Tensor:
    """Focal loss for dense, possibly soft, targets t ∈ [0, 1] (without α).

    Uses torchvision's definitions for soft targets: ``p_t = p t + (1 - p)(1 - t)`` and
    CE the binary cross-entropy with target t. ``log(1 - p_t) = log(t σ(-x) + (1 - t) σ(x))``
    is evaluated as a log-sum-exp of log-sigmoids so that nothing underflows; for
    t ∈ {0, 1} it reduces to :func:`_focal_of_z`.
    """
    log_p = F.logsigmoid(x)
    log_1mp = log_p - x  # log σ(-x) = log σ(x) - x
    ce = -(t * log_p + (1 - t) * log_1mp)
    if gamma == 0:
        return ce
    log_1mpt = torch.logaddexp(torch.log(t) + log_1mp, torch.log1p(-t) + log_p)
    return ce * torch.exp(gamma * log_1mpt)


# --------------------------------------------------------------------------------------
# The fast path the training loop takes: index targets, summed. One pass over the logits
# computes each entry's loss *and* its closed-form gradient (Appendix B), so backward is a
# single multiply. It is proven equal to the readable kernels above by tests/test_fused_loss.py.
# --------------------------------------------------------------------------------------
_CHUNK_ELEMENTS = 1 << 18  # per CPU pass: a few MB of temporaries, small enough to stay in cache


def _softplus_fast(z: Tensor) -> Tensor:
    """softplus(z) = max(z, 0) + log1p(e^-|z|) with a vectorised log1p.

    PyTorch's CPU ``log1p`` (and so ``softplus``) is not vectorised: ~10× slower than ``log``.
    Goldberg's identity log1p(u) = u · log(w) / (w - 1), w = 1 + u, keeps full relative
    precision with a plain ``log``; where w rounds to 1, log1p(u) = u (0/0 → ratio 1).
    """
    u = z.abs().neg_().exp_()
    w = u + 1
    ratio = torch.log(w).div_(w.sub_(1)).nan_to_num_(nan=1.0)
    return ratio.mul_(u).add_(z.clamp(min=0))


def _focal_and_grad(z: Tensor, gamma: float, want_grad: bool) -> tuple[Tensor, Optional[Tensor]]:
    """FL(z) = softplus(z) · σ(z)^γ of entries z = -x_t, and dFL/dz (None unless asked).

    dFL/dz = σ^γ · σ + γ · softplus · σ^γ · (1 - σ) = σ^γ · σ + γ · FL · (1 - σ): no negative
    power of σ, so it is finite for every γ ≥ 0 (Appendix B's gradient, written in z).
    """
    s = torch.sigmoid(z)  # σ(z) = 1 - p_t
    loss = _softplus_fast(z)  # -log p_t
    if gamma == 0:
        return loss, (s if want_grad else None)
    mod = s * s if gamma == 2 else s.pow(gamma)  # (1 - p_t)^γ; γ = 2 is the paper's
    loss.mul_(mod)
    if not want_grad:
        return loss, None
    return loss, torch.rsub(s, 1).mul_(loss).mul_(gamma).addcmul_(mod, s)


class _FusedFocalSum(torch.autograd.Function):
    """Σ α_t FL over index targets; forward also computes the gradient, backward scales it.

    x: (N, K) logits (fp32/fp64); target: (N,) int64 in {0..K-1, BACKGROUND, IGNORE}.
    """

    @staticmethod
    def forward(ctx, x: Tensor, target: Tensor, gamma: float, w_pos: float, w_neg: float) -> Tensor:
        want_grad = ctx.needs_input_grad[0]
        row_weight = (target != IGNORE).to(x.dtype).mul_(w_neg)  # (N,): every entry first a negative
        grad = torch.empty_like(x) if want_grad else None
        total = x.new_zeros(())
        # Chunks keep the temporaries in cache on a CPU; a GPU takes the whole tensor at once.
        step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1])) if x.device.type == "cpu" else max(1, x.shape[0])
        for start in range(0, x.shape[0], step):
            stop = min(start + step, x.shape[0])
            loss, g = _focal_and_grad(x[start:stop], gamma, want_grad)
            total += loss.sum(1) @ row_weight[start:stop]
            if want_grad:
                torch.mul(g, row_weight[start:stop, None], out=grad[start:stop])
        # Swap in the one positive entry of each foreground row: z = -x there (§3 notation).
        rows = torch.nonzero(target >= 0).squeeze(1)
        cols = target[rows]
        x_pos = x[rows, cols]
        as_negative, _ = _focal_and_grad(x_pos, gamma, False)
        as_positive, g_pos = _focal_and_grad(-x_pos, gamma, want_grad)
        total += w_pos * as_positive.sum() - w_neg * as_negative.sum()
        if want_grad:
            grad[rows, cols] = g_pos.mul_(-w_pos)  # d/dx = -d/dz
            ctx.save_for_backward(grad)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Optional[Tensor], None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None


# --------------------------------------------------------------------------------------
# Input checks: cheap ones always, data-dependent ones (a device sync) when asked.
# --------------------------------------------------------------------------------------
def _check_params(gamma: float, alpha: Optional[float], reduction: str) -> tuple[float, Optional[float]]:
    try:
        gamma = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}") from None
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    if alpha is not None:
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ValueError(f"alpha must be None or a number in [0, 1], got {alpha!r}") from None
        if not 0.0 <= alpha <= 1.0:  # also rejects NaN
            raise ValueError(f"alpha must be None or in [0, 1], got {alpha}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return gamma, alpha


def _check_tensors(logits: Tensor, target: Tensor, check_values: bool) -> bool:
    """Validate shapes, dtypes and (optionally) values; return True for an index-form target."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        kind = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point tensor (..., K), got {kind}")
    if logits.dim() == 0:
        raise ValueError("logits must have a class dimension (..., K), got a 0-d tensor")
    if logits.shape[-1] == 0:
        raise ValueError("logits must have at least one class (K >= 1) in their last dimension, "
                         f"got {tuple(logits.shape)}")
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a tensor, got {type(target).__name__}")
    num_classes = logits.shape[-1]
    if target.is_floating_point():
        is_index = False
        if target.shape != logits.shape:
            hint = (
                "; for class indices use an integer (int64) tensor"
                if target.shape == logits.shape[:-1]
                else ""
            )
            raise ValueError(
                f"a float (dense) target must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}{hint}"
            )
    elif target.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        is_index = True
        if target.shape != logits.shape[:-1]:
            raise ValueError(
                f"an integer (index) target must have shape logits.shape[:-1] = "
                f"{tuple(logits.shape[:-1])}, got {tuple(target.shape)}"
            )
    else:
        raise ValueError(
            f"target must be a float tensor (dense 0/1 or soft targets) or an integer tensor "
            f"(class indices, -1 background, -2 ignore), got dtype {target.dtype}"
        )
    if check_values and logits.numel() > 0:
        lo, hi = torch.aminmax(logits.detach())
        if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
            bad = ~torch.isfinite(logits.detach())
            first = tuple(torch.nonzero(bad)[0].tolist())
            raise ValueError(
                f"logits contain {int(bad.sum())} NaN/inf value(s), the first at index {first}"
            )
        if target.numel() > 0:
            tlo, thi = (v.item() for v in torch.aminmax(target.detach()))
            if is_index and (tlo < IGNORE or thi >= num_classes):
                bad_label = tlo if tlo < IGNORE else thi
                raise ValueError(
                    f"target holds label {bad_label}, but valid labels are 0..{num_classes - 1} "
                    f"(K = {num_classes}), {BACKGROUND} (background) and {IGNORE} (ignore)"
                )
            if not is_index and not (0.0 <= tlo and thi <= 1.0):  # also catches NaN
                raise ValueError(f"a dense target must lie in [0, 1], got values in [{tlo}, {thi}]")
    return is_index


def _is_binary(t: Tensor) -> bool:
    """True when every entry of a dense target is exactly 0 or 1."""
    return bool(((t == 0) | (t == 1)).all())


def _compute_dtype(logits: Tensor) -> torch.dtype:
    # Half-precision inputs are computed in fp32, as autocast does for losses.
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


# --------------------------------------------------------------------------------------
# The two target forms.
# --------------------------------------------------------------------------------------
def _reduce_dense(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if loss.numel() > 0 else loss.sum()


def _index_loss(
    x: Tensor,
    target: Tensor,
    kernel: Callable[[Tensor], Tensor],
    alpha: Optional[float],
    reduction: str,
) -> Tensor:
    """Loss for index targets: all entries scored as negatives, positives swapped in.

    x: (..., K) logits; target: (...) labels in {0..K-1, -1, -2}.
    """
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    target = target.reshape(-1).long()
    w_pos, w_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)  # α_t (§3.1)

    neg = kernel(x)  # (N, K): z = x for a negative entry
    valid = (target != IGNORE).to(x.dtype)  # (N,)
    rows = torch.nonzero(target >= 0).squeeze(1)  # foreground rows
    cols = target[rows]
    pos = kernel(-x[rows, cols])  # z = -x for the one positive entry of each such row

    if reduction == "none":
        loss = neg * (w_neg * valid).unsqueeze(1)
        return loss.index_put((rows, cols), w_pos * pos).reshape(shape)
    # Σ over valid rows of the all-negative loss, minus the negative score of each
    # positive entry, plus its positive score: the same sum a dense one-hot would give.
    total = w_neg * (neg.sum(dim=1) @ valid - neg[rows, cols].sum()) + w_pos * pos.sum()
    if reduction == "sum":
        return total
    count = valid.sum() * shape[-1]
    return total / count.clamp(min=1)


# --------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------
def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Optional[float] = 0.25,
    reduction: str = "sum",
    check_values: bool = True,
    fused: bool = True,
) -> Tensor:
    """Sigmoid focal loss FL(p_t) = -α_t (1 - p_t)^γ log(p_t) (paper eq. 5).

    Args:
        logits: (..., K) raw class scores (any float dtype; fp16/bf16 are computed in fp32).
        target: dense float (..., K) in [0, 1], or integer (...) class indices with
            -1 = background and -2 = ignore (see the module docstring).
        gamma: focusing parameter γ ≥ 0; γ = 0 is α-balanced cross-entropy.
        alpha: weight α of positives (negatives get 1 - α), or None for no weighting.
            The paper's default 0.25 *down*-weights positives (§3.2, Table 1b).
        reduction: "none" (shape of logits), "sum" (the paper's choice, normalised by the
            caller by the number of foreground anchors) or "mean" (over non-ignored
            entries; 0 when there are none).
        check_values: check for NaN/inf logits and out-of-range targets. This costs a
            device sync; a training loop that checks its loss can switch it off.
        fused: for index targets with reduction "sum" or "mean", compute value and
            closed-form gradient in one chunked pass (the default: several times faster than
            autograd through the elementwise ops, and a fraction of their memory). False
            takes the readable reference path; both give the same numbers up to rounding.

    Returns:
        The loss in the compute dtype (fp32 for half inputs): a scalar, or (..., K).
    """
    gamma, alpha = _check_params(gamma, alpha, reduction)
    is_index = _check_tensors(logits, target, check_values)
    x = logits.to(_compute_dtype(logits))
    if is_index and fused and reduction != "none":
        num_classes = x.shape[-1]
        w_pos, w_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)  # α_t (§3.1)
        flat_target = target.reshape(-1).long()
        total = _FusedFocalSum.apply(x.reshape(-1, num_classes), flat_target, gamma, w_pos, w_neg)
        if reduction == "sum":
            return total
        return total / ((flat_target != IGNORE).sum() * num_classes).clamp(min=1)
    if is_index:
        return _index_loss(x, target, partial(_focal_of_z, gamma=gamma), alpha, reduction)
    t = target.to(x.dtype)
    # 0/1 targets (the common case) take the cheaper binary kernel; soft ones the general form.
    loss = _focal_of_z(x * (1 - 2 * t), gamma) if _is_binary(t) else _focal_dense(x, t, gamma)
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return _reduce_dense(loss, reduction)


def balanced_cross_entropy(
    logits: Tensor,
    target: Tensor,
    alpha: Optional[float] = 0.75,
    reduction: str = "sum",
    check_values: bool = True,
    fused: bool = True,
) -> Tensor:
    """α-balanced cross-entropy CE = -α_t log(p_t) (paper eq. 3): the focal loss at γ = 0.

    The default α = 0.75 is the best α-balanced CE of the paper's Table 1a (31.1 AP).
    Arguments as in :func:`focal_loss`.
    """
    return focal_loss(logits, target, 0.0, alpha, reduction, check_values, fused)


def focal_loss_star(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    beta: float = 1.0,
    alpha: Optional[float] = None,
    reduction: str = "sum",
    check_values: bool = True,
) -> Tensor:
    """FL* (Appendix A): p*_t = σ(γ x_t + β), FL* = -log(p*_t) / γ.

    Table 3 reports FL*(γ=2, β=1) at 33.8 AP and FL*(γ=4, β=0) at 33.9, next to FL's 34.0.
    Targets must be binary: index form, or dense 0/1. ``alpha`` optionally weights
    positives by α and negatives by 1 - α as in :func:`focal_loss` (None: no weighting).
    Other arguments as in :func:`focal_loss`; γ must be > 0.
    """
    gamma, alpha = _check_params(gamma, alpha, reduction)
    if gamma == 0:
        raise ValueError("focal_loss_star divides by gamma: gamma must be > 0, got 0")
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a finite number, got {beta!r}") from None
    if not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta}")
    is_index = _check_tensors(logits, target, check_values)
    x = logits.to(_compute_dtype(logits))
    kernel = partial(_focal_star_of_z, gamma=gamma, beta=beta)
    if is_index:
        return _index_loss(x, target, kernel, alpha, reduction)
    t = target.to(x.dtype)
    if check_values and not _is_binary(t):
        raise ValueError("focal_loss_star needs binary targets: a dense target must hold only 0 and 1")
    loss = kernel(x * (1 - 2 * t))  # z = -x_t
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return _reduce_dense(loss, reduction)


def focal_loss_of_pt(p_t: Tensor, gamma: float, alpha: Optional[float] = None) -> Tensor:
    """FL of one positive example as a function of p_t ∈ (0, 1) (the curves of Figure 1).

    p_t: any shape, strictly inside (0, 1). Returns the same shape, in float64.
    ``alpha`` weights the example as a positive (α_t = α); for a negative use 1 - α.
    """
    p_t = torch.as_tensor(p_t, dtype=torch.float64)
    if p_t.numel() > 0 and not bool(((p_t > 0) & (p_t < 1)).all()):
        raise ValueError("p_t must lie strictly inside (0, 1): the loss is infinite at 0 and its logit at 1")
    x_t = torch.logit(p_t).unsqueeze(-1)  # (..., 1): a positive entry's logit is x_t
    ones = torch.ones_like(x_t)
    return focal_loss(x_t, ones, gamma, alpha, reduction="none").squeeze(-1)
