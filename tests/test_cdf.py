"""fl_lab.analysis, Figure 4: reservoir sampling, loss CDFs and the shares of the hardest samples."""

import json
import math

import pytest
import torch

from fl_lab import plots
from fl_lab.analysis import (
    FAILS,
    HOLDS,
    LossCDF,
    Reservoir,
    cumulative_loss,
    format_claims,
    hardest_share,
    loss_cdf,
    paper_findings,
)
from fl_lab.data import Shapes, collate
from fl_lab.loss import BACKGROUND
from fl_lab.matcher import assign_targets, pad_targets
from fl_lab.model import RetinaNet
from fl_lab.torchvision_weights import retinanet_from_torchvision


def fl_reference(p_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """-(1 - p_t)^γ log p_t, straight from eq. 4 in float64."""
    p_t = p_t.double()
    return -((1 - p_t) ** gamma) * torch.log(p_t)


# ---------------------------------------------------------------------- reservoir
def test_reservoir_keeps_everything_below_capacity():
    r = Reservoir(100)
    r.add(torch.arange(30.0))
    r.add(torch.arange(30.0, 60.0).reshape(3, 10))
    assert r.seen == 60
    assert torch.equal(torch.sort(r.values).values, torch.arange(60.0))


@pytest.mark.parametrize("chunk", [1, 7, 250, 5000])
def test_reservoir_is_a_uniform_sample_without_replacement(chunk):
    stream = torch.arange(4_000.0)
    counts = torch.zeros(10)
    for seed in range(20):
        r = Reservoir(200, seed=seed)
        for part in stream.split(chunk):
            r.add(part)
        assert r.seen == 4_000 and r.values.numel() == 200
        assert r.values.unique().numel() == 200  # no value twice
        counts += torch.bincount((r.values // 400).long(), minlength=10)
    # 4 000 draws over 10 equal bins: 400 each, sd ≈ 19 -- a 6-sd band cannot be met by a biased sampler
    # (keeping the first or last values, or over-weighting late chunks, lands far outside it).
    assert (counts - 400).abs().max() < 115, counts


def test_reservoir_rejects_zero_capacity():
    with pytest.raises(ValueError, match="capacity"):
        Reservoir(0)


# ---------------------------------------------------------------------- curves and shares
def test_cumulative_loss_by_hand():
    cdf = cumulative_loss(torch.tensor([3.0, 1.0, 0.0, 4.0]))
    assert torch.allclose(cdf, torch.tensor([0.0, 0.125, 0.5, 1.0], dtype=torch.float64))
    assert torch.equal(cumulative_loss(torch.zeros(3)), torch.zeros(3, dtype=torch.float64))


def test_hardest_share_by_hand():
    losses = torch.arange(1.0, 11.0)  # total 55
    assert hardest_share(losses, 0.2) == pytest.approx(19 / 55)  # 10 and 9
    assert hardest_share(losses, 0.05) == pytest.approx(10 / 55)  # ⌈0.5⌉ = 1 sample
    assert hardest_share(losses, 1.0) == pytest.approx(1.0)
    assert hardest_share(torch.zeros(4), 0.2) == 0.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            hardest_share(losses, bad)


def two_point_negatives(n: int = 10_000, hard: int = 100) -> torch.Tensor:
    """1% hard negatives at p_t = 0.1, 99% easy ones at p_t = 0.99."""
    return torch.cat([torch.full((hard,), 0.1), torch.full((n - hard,), 0.99)]).double()


def test_shares_of_a_two_point_mixture_match_hand_computation():
    negatives = two_point_negatives()
    positives = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    result = LossCDF.from_probabilities(positives, negatives, gammas=(0, 2))
    shares = result.shares()
    for gamma in (0, 2):
        hard, easy = fl_reference(torch.tensor(0.1), gamma), fl_reference(torch.tensor(0.99), gamma)
        expected = float(100 * hard / (100 * hard + 9900 * easy))
        assert shares[("negatives", gamma)][0.01] == pytest.approx(expected, rel=1e-9)
        pos = fl_reference(positives, gamma)
        top20 = torch.sort(pos, descending=True).values[: math.ceil(0.2 * 99)].sum() / pos.sum()
        assert shares[("positives", gamma)][0.2] == pytest.approx(float(top20), rel=1e-9)
    # the paper's finding in miniature: with γ = 2 the hardest 1% of negatives hold ~all their loss
    assert shares[("negatives", 0)][0.01] == pytest.approx(0.6983, abs=1e-3)
    assert shares[("negatives", 2)][0.01] > 0.9999


def test_equal_samples_give_the_diagonal():
    result = LossCDF.from_probabilities(torch.full((50,), 0.7), torch.full((200,), 0.95), gammas=(0, 1, 2))
    for kind in ("positives", "negatives"):
        for gamma in result.gammas:
            fraction, cdf = result.curve(kind, gamma, points=11)
            assert torch.allclose(cdf, fraction, atol=1e-12)
            assert hardest_share(result.losses(kind, gamma), 0.2) == pytest.approx(0.2)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_curves_are_monotone_and_end_at_one(gamma):
    gen = torch.Generator().manual_seed(0)
    positives = torch.rand(3000, generator=gen, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    negatives = torch.distributions.Beta(20.0, 1.0).sample((20_000,)).double().clamp(1e-6, 1 - 1e-6)
    result = LossCDF.from_probabilities(positives, negatives, gammas=(gamma,))
    for kind, p_t in (("positives", positives), ("negatives", negatives)):
        assert torch.allclose(result.losses(kind, gamma), fl_reference(p_t, gamma), rtol=1e-9, atol=1e-15)
        fraction, cdf = result.curve(kind, gamma, points=101)
        assert fraction[0] == 0 and cdf[0] == 0 and cdf[-1] == pytest.approx(1.0)
        assert bool((cdf[1:] >= cdf[:-1]).all())
        assert bool((cdf <= fraction + 1e-12).all())  # sorted ascending: never above the diagonal


def test_losses_stay_exact_where_p_t_rounds_to_one():
    # A negative at p = 1e-9 has p_t = 1 - 1e-9: kept as x_t = 20.7, its CE is ~1e-9, not 0.
    result = LossCDF(positives=torch.tensor([0.0]), negatives=torch.tensor([20.723]), gammas=(0,))
    assert result.losses("negatives", 0.0).item() == pytest.approx(math.log1p(math.exp(-20.723)), rel=1e-6)
    assert result.losses("negatives", 0.0).item() > 0


def test_from_probabilities_rejects_p_t_outside_the_open_interval():
    with pytest.raises(ValueError, match="negatives"):
        LossCDF.from_probabilities(torch.tensor([0.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="kind"):
        LossCDF.from_probabilities(torch.tensor([0.5]), torch.tensor([0.5])).losses("ignored", 2.0)


def test_table_lists_every_gamma():
    result = LossCDF.from_probabilities(torch.linspace(0.1, 0.9, 9), two_point_negatives(), gammas=(0, 0.5, 2))
    lines = result.table().splitlines()
    assert len(lines) == 3 + 3
    assert "pos. top 20%" in lines[1] and "neg. top 1%" in lines[1]
    assert lines[-1].split()[0] == "2"


# ---------------------------------------------------------------------- from a model
@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = RetinaNet(3, backbone="resnet18", fpn_channels=16, head_convs=1)
    data = Shapes(num_images=5, image_size=128, num_classes=3, seed=3, min_size=16)
    return model, data


def independent_samples(model, data):
    """x_t of all positives and negatives, one image at a time, without loss_cdf's code path."""
    model.eval()
    pos, neg = [], []
    with torch.no_grad():
        for image, target in data:
            batch = collate([(image, target)])
            out = model(batch.images)
            boxes, labels, valid = pad_targets([target["boxes"]], [target["labels"]])
            assigned = assign_targets(out.anchors, boxes, labels, valid, model.matcher, model.box_coder, num_classes=3)
            lab, x = assigned.labels[0], out.cls_logits[0]
            fg = lab >= 0
            pos.append(x[fg, lab[fg]])
            neg.append(-x[lab == BACKGROUND].reshape(-1))
    return torch.cat(pos), torch.cat(neg)


def test_loss_cdf_collects_every_positive_and_negative(model_and_data):
    model, data = model_and_data
    model.train()
    result = loss_cdf(model, data, max_negatives=10**7, max_positives=10**6, batch_size=2, progress=False)
    assert model.training  # mode restored
    pos, neg = independent_samples(model, data)
    assert result.seen_positives == pos.numel() > 0 and result.seen_negatives == neg.numel()
    assert result.num_images == 5
    assert torch.allclose(torch.sort(result.positives).values, torch.sort(pos).values, atol=1e-5)
    assert torch.allclose(torch.sort(result.negatives).values, torch.sort(neg).values, atol=1e-5)


def test_loss_cdf_subsamples_to_the_caps(model_and_data):
    model, data = model_and_data
    result = loss_cdf(model, data, max_negatives=500, max_positives=3, progress=False)
    assert result.negatives.numel() == 500 and result.positives.numel() == 3
    assert result.seen_negatives > 500
    _, neg = independent_samples(model, data)
    # a subset of the real samples (up to float rounding: loss_cdf runs the images in batches)
    ordered = torch.sort(neg).values
    at = torch.searchsorted(ordered, result.negatives).clamp(1, ordered.numel() - 1)
    nearest = torch.minimum((ordered[at] - result.negatives).abs(), (ordered[at - 1] - result.negatives).abs())
    assert nearest.max() < 1e-5
    with pytest.raises(ValueError, match="max_negatives"):
        loss_cdf(model, data, max_negatives=0)


def test_cdf_figure_has_two_labelled_panels():
    result = LossCDF.from_probabilities(torch.linspace(0.1, 0.9, 9), two_point_negatives(), gammas=(0, 0.5, 1, 2))
    fig = plots.cdf_figure(result)
    left, right = fig.axes
    assert fig._suptitle.get_text().endswith("(paper Figure 4)")
    assert left.get_title() == "positive samples" and right.get_title() == "negative samples"
    assert left.get_ylabel() and right.get_xlabel().startswith("fraction of negatives (10,000")
    assert [t.get_text() for t in right.get_legend().get_texts()][:4] == ["γ = 0 (CE)", "γ = 0.5", "γ = 1", "γ = 2"]
    assert len(right.lines) == 5  # four γ and the diagonal


def test_paper_findings_on_samples_shaped_like_figure_4():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    # positives: p_t ~ Beta(1, 2) -- by hand (float64 reference above) its hardest 20% hold 43% of the
    # loss at γ = 0 and 57% at γ = 2
    positives = torch.distributions.Beta(1.0, 2.0).sample((20_000,)).double().clamp(0.01, 0.99)
    # negatives: mostly very easy (p_t ≈ 0.999), a few hard ones
    negatives = torch.cat([torch.full((9_900,), 0.999),
                           torch.rand(100, generator=gen, dtype=torch.float64) * 0.5 + 0.2])
    claims = paper_findings(LossCDF.from_probabilities(positives, negatives))
    assert len(claims) == 4
    assert [claims[i].verdict for i in (0, 1, 3)] == [HOLDS] * 3, format_claims(claims)
    ref = fl_reference(positives, 2.0)
    top20 = float(torch.sort(ref, descending=True).values[:4000].sum() / ref.sum())
    assert claims[0].detail == f"they hold {top20:.0%}"
    assert claims[2].verdict == FAILS  # these negatives are far more skewed than the positives even at γ = 0
    # negatives all equally hard: no concentration at γ = 2
    flat = paper_findings(LossCDF.from_probabilities(positives, torch.full((1000,), 0.9, dtype=torch.float64)))
    assert flat[3].verdict == FAILS and "hardest 5% hold 5.0%" in flat[3].detail


def test_loss_cdf_of_a_torchvision_coco_model_on_a_coco_folder(tmp_path):
    """Lesson 05's optional cell: torchvision weights file + COCO folder with category-id labels."""
    from torchvision.io import write_png
    from torchvision.models.detection import retinanet_resnet50_fpn

    from fl_lab.data import CocoDataset

    torch.manual_seed(0)
    torch.save(retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict(),
               tmp_path / "weights.pth")
    (tmp_path / "val").mkdir()
    for i in (1, 2):
        write_png(torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8), str(tmp_path / "val" / f"{i}.png"))
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.png", "width": 128, "height": 128} for i in (1, 2)],
        "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 90, "bbox": [10, 10, 60, 50]},
                        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [30, 20, 40, 90]}],
    }))
    model = retinanet_from_torchvision(torch.load(tmp_path / "weights.pth", weights_only=True))
    data = CocoDataset(tmp_path / "val", tmp_path / "ann.json", category_id_labels=True)
    result = loss_cdf(model, data, progress=False)
    assert model.num_classes == 91 and result.num_images == 2 and result.seen_positives > 0
    # negatives: every class entry of every background anchor, 91 per anchor
    assert result.seen_negatives % 91 == 0
    # the positives are scored at the category id's output (90 or 1), not at the contiguous label (1 or 0)
    expected = []
    with torch.no_grad():
        for image, target in data:
            output = model(collate([(image, target)]).images)
            labels = model.assign(output, [target]).labels[0]
            fg = labels >= 0
            assert set(labels[fg].tolist()) == set(target["labels"].tolist()) <= {1, 90}
            expected.append(output.cls_logits[0][fg, labels[fg]])
    assert torch.allclose(torch.sort(torch.cat(expected)).values, torch.sort(result.positives).values, atol=1e-5)
