"""Bad input at the API's edges: each case raises ValueError naming the argument (issue 18's list)."""

import pytest
import torch

from fl_lab.anchors import AnchorGenerator
from fl_lab.loss import focal_loss
from fl_lab.matcher import Matcher
from fl_lab.model import RetinaNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=1).eval()


@pytest.fixture(scope="module")
def output(model):
    with torch.no_grad():
        return model(torch.zeros(1, 3, 64, 64))


def test_model_inputs(model, output):
    with pytest.raises(ValueError, match="at least one image"):
        model(torch.zeros(0, 3, 64, 64))  # an empty batch: documented as an error
    with pytest.raises(ValueError, match="target 0: boxes must be a tensor, got list"):
        model.loss(output, [{"boxes": [[0.0, 0, 10, 10]], "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="target 0: labels must be a tensor"):
        model.loss(output, [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": [0]}])
    for bad in (True, 0, 2.5, "3"):
        with pytest.raises(ValueError, match="num_classes"):
            RetinaNet(bad, backbone="resnet18")


def test_detect_refuses_what_it_cannot_decode(model, output):
    for size in ((0, 64), (64, -1)):
        with pytest.raises(ValueError, match="image sizes must be positive"):
            model.detect(output, [size])
    nan = float("nan")
    with pytest.raises(ValueError, match="cls_logits hold NaN"):
        model.detect(output._replace(cls_logits=torch.full_like(output.cls_logits, nan)), [(64, 64)])
    with pytest.raises(ValueError, match="box_deltas hold NaN or infinite"):
        model.detect(output._replace(box_deltas=torch.full_like(output.box_deltas, float("inf"))), [(64, 64)])
    assert len(model.detect(output, [(64, 64)])) == 1  # the good case still works


def test_loss_needs_a_class():
    with pytest.raises(ValueError, match=r"at least one class \(K >= 1\)"):
        focal_loss(torch.zeros(4, 0), torch.full((4,), -1))


def test_matcher_inputs():
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        Matcher()(torch.rand(2, 5), torch.ones(2, dtype=torch.long))
    for value in (1.7, -0.2):
        with pytest.raises(ValueError, match=r"iou must lie in \[0, 1\]"):
            Matcher()(torch.full((1, 3), value))


@pytest.mark.parametrize("kwargs", [dict(sizes=None), dict(sizes="abc"), dict(scales=[]), dict(aspect_ratios=(1, "2")),
                                    dict(strides=None), dict(sizes=(32, True, 128, 256, 512))])
def test_anchor_generator_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be a non-empty sequence of numbers"):
        AnchorGenerator(**kwargs)


def test_anchor_generator_image_size():
    for bad in (64, (64,), (0, 64), (64.5, 64), "64x64"):
        with pytest.raises(ValueError, match="image_size"):
            AnchorGenerator().gen(bad)


def test_box_coding_and_cell_anchors_name_a_bad_argument():
    from fl_lab.boxes import BoxCoder

    with pytest.raises(ValueError, match=r"boxes must be a tensor of shape \(\.\.\., 4\).*got \(1, 3\)"):
        BoxCoder().encode(torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"anchors must be a tensor of shape \(\.\.\., 4\).*got \(5,\)"):
        BoxCoder().decode(torch.zeros(2, 4), torch.zeros(5))
    with pytest.raises(ValueError, match=r"level must be an integer in 0\.\.4 \(0 = P3\), got 7"):
        AnchorGenerator().cell_anchors(level=7)
    assert AnchorGenerator().cell_anchors(level=torch.tensor(2).item()).shape == (9, 4)
