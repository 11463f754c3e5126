"""fl_lab.detection_loss: the loss as its own unit, and its explicit interface for losses that need boxes."""

from functools import partial

import pytest
import torch

from fl_lab.detection_loss import detection_loss, needs_predicted_boxes
from fl_lab.loss import focal_loss
from fl_lab.matcher import assign_targets, pad_targets
from fl_lab.ohem import ohem_loss


def test_a_loss_says_it_needs_the_predicted_boxes():
    assert needs_predicted_boxes(ohem_loss) and needs_predicted_boxes(partial(ohem_loss, batch_size=16))
    assert needs_predicted_boxes(partial(partial(ohem_loss, batch_size=16), nms_thresh=0.4))
    assert not needs_predicted_boxes(focal_loss)

    def has_a_boxes_argument(logits, labels, reduction="sum", boxes=None):  # a parameter is no declaration
        assert boxes is None
        return focal_loss(logits, labels, reduction=reduction)

    anchors = torch.tensor([[0.0, 0, 16, 16], [8, 8, 40, 40], [30, 30, 60, 60]])
    boxes, labels, valid = pad_targets([torch.tensor([[8.0, 8, 40, 40]])], [torch.tensor([1])])
    assigned = assign_targets(anchors, boxes, labels, valid, num_classes=2)
    logits, deltas = torch.randn(1, 3, 2), torch.randn(1, 3, 4)
    got = detection_loss(logits, deltas, anchors, assigned, loss_fn=has_a_boxes_argument)
    assert torch.equal(got["cls"], detection_loss(logits, deltas, anchors, assigned, loss_fn=focal_loss)["cls"])
    with pytest.raises(ValueError, match="foreground_ema"):
        detection_loss(logits, deltas, anchors, assigned, normalize="ema")
    ema = torch.tensor(100.0)
    detection_loss(logits, deltas, anchors, assigned, normalize="ema", foreground_ema=ema)
    assert float(ema) == 100.0  # evaluation leaves the running count alone
    detection_loss(logits, deltas, anchors, assigned, normalize="ema", foreground_ema=ema, update_ema=True)
    assert float(ema) == pytest.approx(0.9 * 100 + 0.1 * 1)  # one foreground anchor
