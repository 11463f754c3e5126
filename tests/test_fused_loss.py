"""The fused focal loss (the training loop's default) against the readable reference path,
an independent float64 formula, torchvision, and numerical gradients."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

import fl_lab.loss as loss_module
from fl_lab.loss import BACKGROUND, IGNORE, balanced_cross_entropy, focal_loss

TINY = torch.finfo(torch.float32).tiny  # smallest normal fp32: below it only absolute error means anything


def _batch(n=300, k=7, seed=0, scale=4.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale - 2).to(dtype)
    target = torch.full((n,), BACKGROUND, dtype=torch.long)
    fg = torch.randperm(n, generator=g)[: n // 10]
    target[fg] = torch.randint(0, k, (len(fg),), generator=g)
    target[torch.randperm(n, generator=g)[: n // 20]] = IGNORE
    return logits, target


def _float64_reference(logits, target, gamma, alpha):
    """FL from its definition, in float64, on a dense one-hot; ignored rows dropped."""
    x, t = logits.double(), target
    keep = t != IGNORE
    x, t = x[keep], t[keep]
    onehot = torch.zeros_like(x)
    fg = t >= 0
    onehot[fg, t[fg]] = 1.0
    x_t = torch.where(onehot == 1, x, -x)  # p_t = σ(x_t), 1 - p_t = σ(-x_t): no cancellation
    loss = -(torch.sigmoid(-x_t) ** gamma) * F.logsigmoid(x_t)
    if alpha is not None:
        loss = torch.where(onehot == 1, alpha, 1 - alpha) * loss
    return loss


def _value_and_grad(fn, logits, *args, **kwargs):
    x = logits.detach().clone().requires_grad_()
    value = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.75])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fused_equals_reference_values_and_gradients(gamma, alpha, reduction):
    logits, target = _batch()
    fused = _value_and_grad(focal_loss, logits, target, gamma, alpha, reduction)
    ref = _value_and_grad(focal_loss, logits, target, gamma, alpha, reduction, fused=False)
    torch.testing.assert_close(fused[0], ref[0], rtol=2e-6, atol=1e-6)  # fp32 rounding
    torch.testing.assert_close(fused[1], ref[1], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
def test_fused_matches_float64_definition_across_the_logit_range(gamma):
    # logits from -90 to 90: easy negatives (σ ≈ 0), confident mistakes and saturated sigmoids
    logits = torch.linspace(-90, 90, 181 * 4, dtype=torch.float64).reshape(-1, 4)
    target = torch.arange(len(logits)) % 6 - 2  # -2, -1, 0, 1, 2, 3: every kind of row
    x = logits.clone().requires_grad_()
    fused = focal_loss(x, target, gamma, 0.25)
    fused.backward()
    ref_x = logits.clone().requires_grad_()
    ref = _float64_reference(ref_x, target, gamma, 0.25).sum()
    ref.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-300)
    # fp32 too: values within a few ulps of the float64 definition, element by element
    # (|z| ≤ 80 keeps the inputs finite in fp32 arithmetic; results below TINY are denormals)
    z = logits[logits.abs() <= 80].float()
    elementwise = loss_module._focal_and_grad(z, gamma, True)
    z = z.double().requires_grad_()  # the same inputs, exactly
    exact = F.softplus(z) * torch.sigmoid(z) ** gamma
    (exact_grad,) = torch.autograd.grad(exact.sum(), z)
    torch.testing.assert_close(elementwise[0].double(), exact.detach(), rtol=2e-6, atol=TINY)
    torch.testing.assert_close(elementwise[1].double(), exact_grad, rtol=1e-5, atol=TINY)


def test_fast_softplus_keeps_relative_precision():
    z = torch.cat([torch.linspace(-80, 100, 20001), torch.tensor([0.0, -1e-8, 1e-8, 17.0, -17.0])])
    exact = F.softplus(z.double())
    fast = loss_module._softplus_fast(z).double()
    # (below -87, e^z is an fp32 denormal: no format keeps relative precision there)
    assert ((fast - exact).abs() / exact).max() < 1e-6  # log1p through log at ~2 ulp


def test_fused_matches_torchvision_sigmoid_focal_loss():
    logits, target = _batch(dtype=torch.float64)
    keep = target != IGNORE
    onehot = torch.zeros_like(logits)
    fg = target >= 0
    onehot[fg, target[fg]] = 1.0
    ours = _value_and_grad(focal_loss, logits, target, 2.0, 0.25)
    theirs = _value_and_grad(lambda x: sigmoid_focal_loss(x[keep], onehot[keep], 0.25, 2.0, "sum"), logits)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
def test_fused_gradcheck(gamma):
    logits, target = _batch(n=12, k=3, seed=1, scale=3.0, dtype=torch.float64)
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: focal_loss(v, target, gamma, 0.25), (x,))


def test_fused_chunks_and_batched_shapes(monkeypatch):
    monkeypatch.setattr(loss_module, "_CHUNK_ELEMENTS", 50)  # many chunks, a ragged last one
    logits, target = _batch(n=2 * 123, k=5, seed=2)
    logits, target = logits.reshape(2, 123, 5), target.reshape(2, 123)
    fused = _value_and_grad(focal_loss, logits, target)
    ref = _value_and_grad(focal_loss, logits, target, fused=False)
    torch.testing.assert_close(fused[0], ref[0])
    torch.testing.assert_close(fused[1], ref[1])
    assert fused[1].shape == (2, 123, 5)


def test_fused_half_precision_computes_in_fp32():
    logits, target = _batch(n=64, k=4, seed=3)
    x = logits.bfloat16().requires_grad_()
    value = balanced_cross_entropy(x, target)
    value.backward()
    assert value.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    ref = balanced_cross_entropy(logits.bfloat16().float(), target, fused=False)
    torch.testing.assert_close(value, ref)


def test_fused_without_grad_and_with_retained_graph():
    logits, target = _batch(n=40, k=3, seed=4)
    with torch.no_grad():
        plain = focal_loss(logits, target)
    x = logits.clone().requires_grad_()
    value = focal_loss(x, target)
    torch.testing.assert_close(value.detach(), plain)
    value.backward(retain_graph=True)
    once = x.grad.clone()
    value.backward()  # a second backward through the same graph accumulates the same gradient
    torch.testing.assert_close(x.grad, 2 * once)
    # grad_output scales the stored gradient: d(3 L)/dx = 3 dL/dx
    x.grad = None
    (3 * focal_loss(x, target)).backward()
    torch.testing.assert_close(x.grad, 3 * once)


def test_fused_edge_cases():
    k = 4
    empty = torch.zeros(0, k, requires_grad=True)
    value = focal_loss(empty, torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and empty.grad.shape == (0, k)
    all_ignored = torch.randn(5, k, requires_grad=True)
    assert focal_loss(all_ignored, torch.full((5,), IGNORE), reduction="mean").item() == 0.0
    with pytest.raises(ValueError, match="NaN/inf"):
        focal_loss(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="label 2"):
        focal_loss(torch.zeros(1, 2), torch.tensor([2]))
