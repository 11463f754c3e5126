"""fl_lab.analysis.anchor_coverage: best anchor IoU per object and the negative : positive count."""

import pytest
import torch
from torchvision.ops import box_iou

from fl_lab.analysis import anchor_coverage
from fl_lab.anchors import AnchorGenerator
from fl_lab.data import Shapes
from fl_lab.matcher import Matcher


class Fixed(torch.utils.data.Dataset):
    """Hand-made images: a (H, W) and boxes each."""

    num_classes = 3

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        size, boxes = self.items[i]
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return torch.zeros(3, *size), {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long)}


def reference(dataset, fg=0.5, bg=0.4):
    """Brute force in float64 with torchvision's IoU: each object's best IoU; per image, each
    anchor's best IoU and the strict three-way rule."""
    best, pos, ign, neg = [], [], [], []
    for image, target in dataset:
        anchors = AnchorGenerator().gen(tuple(image.shape[-2:]), dtype=torch.float64)
        iou = box_iou(target["boxes"].double(), anchors)  # (G, A)
        per_anchor = iou.amax(0) if len(iou) else torch.full((len(anchors),), -1.0, dtype=torch.float64)
        best += iou.amax(1).tolist()
        pos.append(int((per_anchor >= fg).sum()))
        ign.append(int(((per_anchor >= bg) & (per_anchor < fg)).sum()))
        neg.append(int((per_anchor < bg).sum()))
    return best, pos, ign, neg


def test_matches_a_brute_force_reference_on_hand_made_boxes():
    data = Fixed([((128, 128), [[10, 10, 42, 42], [60, 50, 124, 114]]), ((96, 160), [[3, 3, 9, 9]]),
                  ((128, 128), []), ((64, 64), [[0, 0, 64, 32]])])
    c = anchor_coverage(data)
    best, pos, ign, neg = reference(data)
    assert c.best_iou.tolist() == pytest.approx(best, abs=1e-6)
    assert c.positives.tolist() == pos and c.ignored.tolist() == ign and c.negatives.tolist() == neg
    assert c.num_images == 4 and c.num_objects == 4 and c.num_classes == 3
    small = best[2]  # the 6-px box: far below the 32-px anchors
    assert small < 0.4 and c.background_share == pytest.approx(sum(b < 0.4 for b in best) / 4)
    assert c.unmatched_share == pytest.approx(sum(b < 0.5 for b in best) / 4)
    assert c.imbalance == pytest.approx(sum(neg) / sum(pos))
    k = 3
    assert c.entry_imbalance == pytest.approx((sum(neg) * k + sum(pos) * (k - 1)) / sum(pos))
    assert c.anchors_per_image == pytest.approx(sum(p + i + n for p, i, n in zip(pos, ign, neg, strict=True)) / 4)


def test_on_shapes_and_with_the_models_matcher():
    data = Shapes(12, image_size=128, max_objects=4, min_size=12, seed=2)
    strict = anchor_coverage(data, num_images=10)
    assert strict.num_images == 10
    best, pos, _, neg = reference([data[i] for i in range(10)])
    assert strict.best_iou.tolist() == pytest.approx(best, abs=1e-6) and strict.positives.tolist() == pos
    loose = anchor_coverage(data, matcher=Matcher(allow_low_quality=True), num_images=10)
    # low-quality matches make each object's best anchors foreground even below 0.5
    assert int(loose.positives.sum()) > int(strict.positives.sum()) and loose.imbalance < strict.imbalance
    text = strict.summary()
    assert "objects whose best anchor has IoU < 0.5" in text and "negatives per positive" in text


def test_sparser_data_has_more_negatives_per_positive():
    dense = anchor_coverage(Shapes(60, image_size=128, max_objects=10))
    single = anchor_coverage(Shapes(60, image_size=128, max_objects=1))
    sparse = anchor_coverage(Shapes(120, image_size=128, max_objects=1, empty_fraction=5 / 6))
    assert dense.imbalance < single.imbalance < sparse.imbalance
    assert sparse.imbalance > 300 and dense.unmatched_share == single.unmatched_share == 0.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least one image"):
        anchor_coverage(Shapes(3, image_size=64), num_images=0)

    class NoClasses(Fixed):
        num_classes = None

    with pytest.raises(ValueError, match="num_classes"):
        anchor_coverage(NoClasses([((64, 64), [])]))
    empty = anchor_coverage(Fixed([((64, 64), [])]))
    assert empty.num_objects == 0 and empty.imbalance == float("inf") and empty.unmatched_share == 0.0
