"""fl_lab.loss against torchvision, an independent float64 reference, and Appendix B."""

from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.autograd import gradcheck

from fl_lab.loss import (
    BACKGROUND,
    IGNORE,
    balanced_cross_entropy,
    focal_loss,
    focal_loss_of_pt,
    focal_loss_star,
)

GAMMAS = (0, 0.5, 1, 2, 5)
ALPHAS = (None, 0.25, 0.75)
REDUCTIONS = ("none", "sum", "mean")


def make_batch(n=64, k=5, seed=0, dtype=torch.float32, scale=3.0):
    """Logits (n, k) and index labels (n,) covering classes, background and ignore."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=gen, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(IGNORE, k, (n,), generator=gen)
    labels[:3] = torch.tensor([IGNORE, BACKGROUND, 0])  # every kind present
    return logits, labels


def one_hot(labels, k, dtype):
    """Dense targets equivalent to index labels (ignored rows: all zeros too)."""
    dense = torch.zeros(*labels.shape, k, dtype=dtype)
    fg = labels >= 0
    dense[fg, labels[fg]] = 1
    return dense


def tv_focal(logits, target, gamma, alpha, reduction):
    return torchvision.ops.sigmoid_focal_loss(
        logits, target, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction=reduction
    )


# ---------------------------------------------------------------- independent reference
def ref_focal(x: float, t: float, gamma: float, alpha) -> float:
    """FL of one entry, straight from the paper's formula (soft t: torchvision's p_t)."""
    p = 1.0 / (1.0 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    a_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * ce


def ref_focal_star(x: float, y: int, gamma: float, beta: float) -> float:
    x_t = x if y == 1 else -x
    p_star = 1.0 / (1.0 + math.exp(-(gamma * x_t + beta)))
    return -math.log(p_star) / gamma


def ref_grad_appendix_b(x: float, y: int, gamma: float) -> float:
    """Appendix B: dFL/dx = y (1 - p_t)^γ (γ p_t log p_t + p_t - 1), y ∈ {-1, +1}."""
    s = 1 if y == 1 else -1
    p_t = 1.0 / (1.0 + math.exp(-s * x))
    return s * (1 - p_t) ** gamma * (gamma * p_t * math.log(p_t) + p_t - 1)


def reference(entry, logits: Tensor, targets: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """``entry(x, t)`` of every logit and its target (N, K), in float64 Python arithmetic; 0 for the
    rows ``valid`` (N,) leaves out (ignored anchors)."""
    keep = valid.tolist() if valid is not None else [True] * len(logits)
    return torch.tensor([[entry(x, t) if v else 0.0 for x, t in zip(xr, tr, strict=True)]
                         for xr, tr, v in zip(logits.tolist(), targets.tolist(), keep, strict=True)],
                        dtype=torch.float64)


# ---------------------------------------------------------------- torchvision
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
def test_dense_matches_torchvision(gamma, alpha, reduction, soft):
    logits, labels = make_batch()
    if soft:
        target = torch.rand(logits.shape, generator=torch.Generator().manual_seed(1))
        target[0] = 0.0
        target[1] = 1.0
    else:
        target = one_hot(labels, logits.shape[1], torch.float32)
    ours = focal_loss(logits, target, gamma, alpha, reduction)
    theirs = tv_focal(logits, target, gamma, alpha, reduction)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_index_matches_torchvision_on_non_ignored_rows(gamma, alpha):
    logits, labels = make_batch(n=200, k=7)
    valid = labels != IGNORE
    dense = one_hot(labels, 7, torch.float32)
    ours = focal_loss(logits, labels, gamma, alpha, "sum")
    theirs = tv_focal(logits[valid], dense[valid], gamma, alpha, "sum")
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-5)


# ---------------------------------------------------------------- index form == dense form
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_index_equals_dense(gamma, alpha):
    logits, labels = make_batch(n=300, k=6, dtype=torch.float64)
    dense = one_hot(labels, 6, torch.float64)
    valid = labels != IGNORE
    for reduction in ("sum", "mean"):
        ours = focal_loss(logits, labels, gamma, alpha, reduction)
        ref = focal_loss(logits[valid], dense[valid], gamma, alpha, reduction)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    per_entry = focal_loss(logits, labels, gamma, alpha, "none")
    ref = focal_loss(logits, dense, gamma, alpha, "none") * valid.unsqueeze(1)
    torch.testing.assert_close(per_entry, ref, rtol=1e-12, atol=1e-14)


def test_index_form_takes_leading_batch_dims():
    logits, labels = make_batch(n=2 * 3 * 5, k=4)
    batched = focal_loss(logits.reshape(2, 15, 4), labels.reshape(2, 15), reduction="none")
    assert batched.shape == (2, 15, 4)
    torch.testing.assert_close(batched.reshape(30, 4), focal_loss(logits, labels, reduction="none"))
    torch.testing.assert_close(
        focal_loss(logits.reshape(2, 15, 4), labels.reshape(2, 15)), focal_loss(logits, labels)
    )


def test_ignored_rows_get_no_gradient():
    logits, labels = make_batch(n=40, k=3, dtype=torch.float64)
    logits.requires_grad_(True)
    focal_loss(logits, labels).backward()
    ignored = labels == IGNORE
    assert ignored.any()
    assert (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored] != 0).all()


def test_mean_counts_only_non_ignored_entries():
    logits, labels = make_batch(n=50, k=4, dtype=torch.float64)
    n_valid = int((labels != IGNORE).sum())
    torch.testing.assert_close(
        focal_loss(logits, labels, reduction="mean"), focal_loss(logits, labels) / (n_valid * 4)
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_all_ignored_or_empty_gives_zero(reduction):
    logits = torch.randn(4, 3, requires_grad=True)
    loss = focal_loss(logits, torch.full((4,), IGNORE), reduction=reduction)
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()
    empty = torch.zeros(0, 3)
    assert focal_loss(empty, torch.zeros(0, dtype=torch.long), reduction=reduction).item() == 0.0
    assert focal_loss(empty, torch.zeros(0, 3), reduction=reduction).item() == 0.0


# ---------------------------------------------------------------- float64 reference
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_matches_float64_reference(gamma, alpha):
    logits, labels = make_batch(n=40, k=3, dtype=torch.float64)
    dense = one_hot(labels, 3, torch.float64)
    valid = labels != IGNORE
    expected = reference(lambda x, t: ref_focal(x, t, gamma, alpha), logits, dense, valid)
    torch.testing.assert_close(focal_loss(logits, labels, gamma, alpha, "none"), expected, rtol=1e-12, atol=1e-15)
    soft = torch.rand(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected_soft = reference(lambda x, t: ref_focal(x, t, gamma, alpha), logits, soft)
    torch.testing.assert_close(focal_loss(logits, soft, gamma, alpha, "none"), expected_soft, rtol=1e-11, atol=1e-15)


def test_alpha_weights_positives_not_negatives():
    """α_t = α for y = 1 and 1 - α for y = 0 (§3.1); a known teaching kit swaps them."""
    x = torch.tensor([[0.3, 0.3]], dtype=torch.float64)
    label = torch.tensor([0])  # entry 0 positive, entry 1 negative
    weighted = focal_loss(x, label, gamma=2.0, alpha=0.25, reduction="none")
    plain = focal_loss(x, label, gamma=2.0, alpha=None, reduction="none")
    torch.testing.assert_close(weighted / plain, torch.tensor([[0.25, 0.75]], dtype=torch.float64))


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("gamma", [0, 0.5, 2, 5])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_gradcheck(gamma, alpha):
    logits, labels = make_batch(n=8, k=3, dtype=torch.float64)
    logits.requires_grad_(True)
    soft = torch.rand(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    soft[0, 0], soft[0, 1] = 0.0, 1.0
    for target in (labels, one_hot(labels, 3, torch.float64), soft):
        for reduction in ("none", "sum"):
            assert gradcheck(lambda x, t=target, r=reduction: focal_loss(x, t, gamma, alpha, r), (logits,))


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_gradient_matches_appendix_b(gamma, alpha):
    logits, labels = make_batch(n=30, k=4, dtype=torch.float64)
    dense = one_hot(labels, 4, torch.float64)
    valid = labels != IGNORE
    expected = reference(lambda x, t: ref_grad_appendix_b(x, int(t), gamma), logits, dense, valid)
    if alpha is not None:  # Appendix B omits α; it scales the gradient by α_t
        expected = expected * (alpha * dense + (1 - alpha) * (1 - dense))
    for target in (labels, dense):
        x = logits.clone().requires_grad_(True)
        focal_loss(x, target, gamma, alpha).backward()
        got = x.grad if target is labels else x.grad * valid.unsqueeze(1)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_cross_entropy_gradient_is_y_times_pt_minus_1():
    """Appendix B: dCE/dx = y (p_t - 1)."""
    x = torch.linspace(-6, 6, 25, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
    y = torch.where(torch.arange(25) % 2 == 0, 0, BACKGROUND)
    focal_loss(x, y, gamma=0, alpha=None).backward()
    s = torch.where(y == 0, 1.0, -1.0).double().unsqueeze(1)
    p_t = torch.sigmoid(s * x.detach())
    torch.testing.assert_close(x.grad, s * (p_t - 1))


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("magnitude", [100.0, 1e4])
def test_finite_at_extreme_logits(dtype, gamma, magnitude):
    x = torch.tensor([[magnitude, -magnitude], [-magnitude, magnitude]], dtype=dtype)
    labels = torch.tensor([0, BACKGROUND])
    mixed = torch.tensor([[1.0, 0.5], [0.0, 0.2]], dtype=dtype)  # soft path; 0/1 entries where p_t -> 1
    for target in (labels, one_hot(labels, 2, dtype), torch.full((2, 2), 0.5, dtype=dtype), mixed):
        for alpha in ALPHAS:
            xg = x.clone().requires_grad_(True)
            loss = focal_loss(xg, target, gamma, alpha, "none")
            loss.sum().backward()
            assert torch.isfinite(loss).all() and torch.isfinite(xg.grad).all(), (target, alpha)
    # Right answers are free; confident wrong answers cost |x| times their weight α_t.
    loss = focal_loss(x, labels, gamma, alpha=0.25, reduction="none")
    expected = torch.tensor([[0.0, 0.0], [0.0, 0.75 * magnitude]], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    wrong = focal_loss(-x[:1, :1], torch.tensor([0]), gamma, alpha=0.25)
    torch.testing.assert_close(wrong.double(), torch.tensor(0.25 * magnitude, dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_fp32(half):
    logits, labels = make_batch(n=100, k=5, scale=4.0)
    x = logits.to(half).requires_grad_(True)
    loss = focal_loss(x, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, focal_loss(x.detach().float(), labels))  # exactly the fp32 result
    loss.backward()
    assert x.grad.dtype == half and torch.isfinite(x.grad.float()).all()
    dense = focal_loss(x.detach(), one_hot(labels, 5, half), reduction="none")
    assert dense.dtype == torch.float32 and torch.isfinite(dense).all()


# ---------------------------------------------------------------- named variants
@pytest.mark.parametrize("alpha", ALPHAS)
def test_balanced_cross_entropy_is_alpha_weighted_bce(alpha):
    logits, labels = make_batch(n=50, k=4, dtype=torch.float64)
    dense = one_hot(labels, 4, torch.float64)
    bce = F.binary_cross_entropy_with_logits(logits, dense, reduction="none")
    weight = 1.0 if alpha is None else alpha * dense + (1 - alpha) * (1 - dense)
    torch.testing.assert_close(balanced_cross_entropy(logits, dense, alpha, "sum"), (weight * bce).sum())
    torch.testing.assert_close(
        balanced_cross_entropy(logits, labels, alpha), focal_loss(logits, labels, gamma=0, alpha=alpha)
    )


def test_balanced_cross_entropy_default_alpha_is_table_1a_best():
    logits, labels = make_batch(n=20, k=3)
    torch.testing.assert_close(balanced_cross_entropy(logits, labels), focal_loss(logits, labels, 0, 0.75))


@pytest.mark.parametrize("gamma,beta", [(2.0, 1.0), (4.0, 0.0), (0.5, -1.0)])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_loss_star(gamma, beta, alpha):
    logits, labels = make_batch(n=30, k=3, dtype=torch.float64)
    dense = one_hot(labels, 3, torch.float64)
    valid = labels != IGNORE
    expected = reference(lambda x, t: ref_focal_star(x, int(t), gamma, beta), logits, dense, valid)
    if alpha is not None:
        expected = expected * (alpha * dense + (1 - alpha) * (1 - dense))
    torch.testing.assert_close(focal_loss_star(logits, labels, gamma, beta, alpha, "none"), expected)
    torch.testing.assert_close(
        focal_loss_star(logits[valid], dense[valid], gamma, beta, alpha), expected.sum()
    )
    x = logits.clone().requires_grad_(True)
    assert gradcheck(lambda z: focal_loss_star(z, labels, gamma, beta, alpha, "none"), (x,))


def test_figure1_numbers_from_the_paper():
    """§3.2: with γ = 2, 100× less loss at p_t = 0.9, ~1000× at 0.968, at most 4× at p_t ≤ 0.5."""
    p_t = torch.tensor([0.9, 0.968], dtype=torch.float64)
    ratio = focal_loss_of_pt(p_t, 0) / focal_loss_of_pt(p_t, 2)
    torch.testing.assert_close(ratio[0], torch.tensor(100.0, dtype=torch.float64))
    assert 950 < ratio[1] < 1050
    low = torch.linspace(0.01, 0.5, 50, dtype=torch.float64)
    low_ratio = focal_loss_of_pt(low, 0) / focal_loss_of_pt(low, 2)
    assert (low_ratio <= 4 + 1e-12).all() and (low_ratio >= 1).all()
    torch.testing.assert_close(
        focal_loss_of_pt(p_t, 2, alpha=0.25), 0.25 * focal_loss_of_pt(p_t, 2), rtol=1e-12, atol=0
    )


# ---------------------------------------------------------------- bad input
def _batch():
    return make_batch(n=6, k=5)


BAD_CALLS = {
    "negative gamma": (lambda x, y: focal_loss(x, y, gamma=-1.0), "gamma must be a finite number >= 0, got -1.0"),
    "NaN gamma": (lambda x, y: focal_loss(x, y, gamma=float("nan")), "gamma"),
    "text gamma": (lambda x, y: focal_loss(x, y, gamma="two"), "gamma"),
    "alpha above 1": (lambda x, y: focal_loss(x, y, alpha=1.5), r"alpha must be None or in \[0, 1\], got 1.5"),
    "alpha below 0": (lambda x, y: focal_loss(x, y, alpha=-0.1), "alpha"),
    "NaN alpha": (lambda x, y: focal_loss(x, y, alpha=float("nan")), "alpha"),
    "unknown reduction": (lambda x, y: focal_loss(x, y, reduction="avg"), "reduction must be one of .*'avg'"),
    "label too large": (lambda x, y: focal_loss(x, torch.tensor([0, 1, 5, 2, -1, -2])), "label 5.*0..4"),
    "label too small": (lambda x, y: focal_loss(x, torch.tensor([0, -3, 1, 2, -1, -2])), "label -3"),
    "index shape": (lambda x, y: focal_loss(x, y[:4]), r"shape logits.shape\[:-1\] = \(6,\), got \(4,\)"),
    "dense shape": (lambda x, y: focal_loss(x, torch.zeros(6, 4)), r"logits' shape \(6, 5\), got \(6, 4\)"),
    "float labels": (lambda x, y: focal_loss(x, y.float()), "for class indices use an integer"),
    "bool target": (lambda x, y: focal_loss(x, torch.zeros(6, 5, dtype=torch.bool)), "dtype torch.bool"),
    "dense target out of range": (lambda x, y: focal_loss(x, torch.full((6, 5), 2.0)), r"\[0, 1\]"),
    "NaN dense target": (lambda x, y: focal_loss(x, torch.full((6, 5), float("nan"))), r"\[0, 1\]"),
    "NaN logit": (lambda x, y: focal_loss(x.index_put((torch.tensor(2), torch.tensor(3)),
                                                      torch.tensor(float("nan"))), y),
                  r"1 NaN/inf value\(s\), the first at index \(2, 3\)"),
    "inf logit": (lambda x, y: focal_loss(x.index_put((torch.tensor(0), torch.tensor(0)),
                                                      torch.tensor(float("inf"))), y),
                  "NaN/inf"),
    "integer logits": (lambda x, y: focal_loss(y.unsqueeze(1), y), "floating-point"),
    "0-d logits": (lambda x, y: focal_loss(torch.tensor(1.0), torch.tensor(0)), "class dimension"),
    "list target": (lambda x, y: focal_loss(x, [0, 1]), "target must be a tensor"),
    "FL* gamma 0": (lambda x, y: focal_loss_star(x, y, gamma=0.0), "gamma must be > 0"),
    "FL* soft target": (lambda x, y: focal_loss_star(x, torch.full((6, 5), 0.5)), "binary targets"),
    "FL* NaN beta": (lambda x, y: focal_loss_star(x, y, beta=float("nan")), "beta"),
    "FL* None beta": (lambda x, y: focal_loss_star(x, y, beta=None), "beta must be a finite number, got None"),
    "balanced CE alpha": (lambda x, y: balanced_cross_entropy(x, y, alpha=2.0), "alpha"),
    "p_t of 1": (lambda x, y: focal_loss_of_pt(torch.tensor([0.5, 1.0]), 2.0), r"strictly inside \(0, 1\)"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_value_error(case):
    call, message = BAD_CALLS[case]
    logits, labels = _batch()
    with pytest.raises(ValueError, match=message):
        call(logits, labels)


def test_value_checks_can_be_switched_off():
    logits, labels = _batch()
    logits[1, 1] = float("nan")
    with pytest.raises(ValueError):
        focal_loss(logits, labels)
    assert torch.isnan(focal_loss(logits, labels, check_values=False))
