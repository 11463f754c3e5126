"""fl_lab.analysis: the simulated anchor batch and the split of its loss."""

import math

import pytest
import torch

from fl_lab.analysis import (
    GROUPS,
    PRIOR_LOGIT,
    LossSetting,
    compare_losses,
    format_shares,
    loss_shares,
    simulate_anchor_batch,
)
from fl_lab.loss import BACKGROUND, IGNORE, focal_loss


def test_simulated_batch_shape_and_labels():
    logits, target = simulate_anchor_batch(num_anchors=1000, num_positives=10, seed=1)
    assert logits.shape == (1000, 1) and target.shape == (1000,)
    assert int((target == 0).sum()) == 10 and int((target == BACKGROUND).sum()) == 990
    again, _ = simulate_anchor_batch(num_anchors=1000, num_positives=10, seed=1)
    assert torch.equal(logits, again)  # seeded: the lesson's numbers are reproducible
    assert abs(logits[10:].mean().item() - PRIOR_LOGIT) < 0.2
    assert math.isclose(PRIOR_LOGIT, -math.log(99), rel_tol=1e-12)


@pytest.mark.parametrize("kwargs,says", [(dict(num_anchors=0), "num_anchors >= 1"),
                                         (dict(num_anchors=5, num_positives=6), "num_positives <= num_anchors"),
                                         (dict(neg_logit_std=-1), "logit spreads must be >= 0")])
def test_simulated_batch_rejects_bad_sizes(kwargs, says):
    with pytest.raises(ValueError, match=says):
        simulate_anchor_batch(**kwargs)


def test_loss_shares_partition_the_total_loss():
    logits = torch.tensor([[2.0, -3.0], [0.5, -4.0], [1.0, 1.0], [-1.0, 3.0]], dtype=torch.float64)
    target = torch.tensor([0, BACKGROUND, IGNORE, 1])
    setting = LossSetting(gamma=2.0, alpha=0.25)
    shares = loss_shares(logits, target, setting)
    assert list(shares) == list(GROUPS)
    # By hand: positives (0,0) and (3,1); negatives (0,1), (1,0), (1,1), (3,0); row 2 ignored.
    # Negative (1,0) has p = σ(0.5) > 0.5, so p_t < 0.5: hard; the others are easy.
    assert [shares[g].count for g in GROUPS] == [2, 1, 3]
    per_entry = focal_loss(logits, target, 2.0, 0.25, reduction="none")
    assert math.isclose(shares["positives"].loss, float(per_entry[0, 0] + per_entry[3, 1]), rel_tol=1e-12)
    assert math.isclose(shares["hard negatives"].loss, float(per_entry[1, 0]), rel_tol=1e-12)
    assert math.isclose(sum(s.share for s in shares.values()), 1.0, rel_tol=1e-12)
    assert math.isclose(shares["hard negatives"].mean, float(per_entry[1, 0]), rel_tol=1e-12)


def test_focal_loss_moves_the_loss_from_easy_negatives():
    """The lesson's claim on its own batch: FL hands the loss to hard examples, α-CE does not."""
    logits, target = simulate_anchor_batch()
    results = compare_losses(logits, target, [LossSetting(0, None), LossSetting(0, 0.75), LossSetting(2, 0.25)])
    ce, bce, fl = results.values()
    assert ce["easy negatives"].share > 0.9
    assert bce["easy negatives"].share > 0.85
    assert fl["easy negatives"].share < 0.6
    hard_fl, hard_ce = (r["positives"].share + r["hard negatives"].share for r in (fl, ce))
    assert hard_fl > 5 * hard_ce


def test_labels_and_table():
    assert LossSetting(0, None).label == "CE"
    assert LossSetting(0, 0.75).label == "α-balanced CE (α = 0.75)"
    assert LossSetting(2, 0.25).label == "FL (γ = 2, α = 0.25)"
    assert LossSetting(0.5, None).label == "FL (γ = 0.5)"
    logits, target = simulate_anchor_batch(num_anchors=500, num_positives=5)
    table = format_shares(compare_losses(logits, target, [LossSetting(0, None), LossSetting(2, 0.25)]))
    lines = table.splitlines()
    assert len(lines) == 5 and lines[3].startswith("CE") and lines[4].startswith("FL (γ = 2, α = 0.25)")
    assert all(g in lines[0] for g in GROUPS)
    groups = loss_shares(logits, target, LossSetting(0, None))
    assert lines[2].split()[1:] == [f"{groups[g].count:,}" for g in GROUPS] + ["500"]  # the anchors of each group


def test_easy_threshold_is_validated():
    logits, target = simulate_anchor_batch(num_anchors=10, num_positives=1)
    with pytest.raises(ValueError, match="easy_pt"):
        loss_shares(logits, target, LossSetting(2, 0.25), easy_pt=1.0)
