"""fl_lab.pretrain: a classification-pretrained backbone made from Shapes crops, loadable as backbone weights."""

import json

import pytest
import torch

from fl_lab.model import RetinaNet
from fl_lab.pretrain import crops, main, pretrain_backbone


def test_crops_hold_one_object_of_a_quarter_to_three_quarters_of_the_side():
    data = crops(20, image_size=64, seed=3)
    sides = []
    for _, target in data:
        assert len(target["labels"]) <= 1
        for x1, y1, x2, y2 in target["boxes"].tolist():
            sides.append(((x2 - x1) * (y2 - y1)) ** 0.5)
    assert len(sides) >= 18 and min(sides) >= 0.2 * 64 and max(sides) <= 0.8 * 64


def test_pretrained_weights_load_into_retinanet(tmp_path):
    summary = pretrain_backbone(tmp_path / "r18.pt", steps=2, batch_size=4, image_size=64, workers=0, progress=False)
    assert summary["steps"] == 2 and 0 <= summary["held_out_accuracy"] <= 1
    assert json.loads((tmp_path / "r18.pt.json").read_text())["backbone"] == "resnet18"
    saved = torch.load(tmp_path / "r18.pt", weights_only=True)
    model = RetinaNet(5, backbone="resnet18", fpn_channels=32, head_convs=1, backbone_weights=tmp_path / "r18.pt")
    assert torch.equal(model.backbone.body.layer2[0].conv1.weight, saved["layer2.0.conv1.weight"])
    with pytest.raises(ValueError, match="steps"):
        pretrain_backbone(tmp_path / "x.pt", steps=0)
    with pytest.raises(SystemExit):
        main(["--steps", "-1", "--out", str(tmp_path / "y.pt")])
