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


def test_shapes_weights_are_made_once_into_the_cache_and_fine_tuned_from_by_name(tmp_path, monkeypatch):
    import fl_lab.pretrain as pretrain
    from fl_lab.train import Config, build_model

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    made = []

    def quick(out, backbone, progress):  # a 2-step stand-in for the 12-minute default
        made.append(out)
        return pretrain_backbone(out, backbone, steps=2, batch_size=4, workers=0, progress=False)

    monkeypatch.setattr(pretrain, "pretrain_backbone", quick)
    path = pretrain.shapes_weights("resnet18", progress=False)
    assert path == tmp_path / "hub" / "checkpoints" / "fl_lab_resnet18_shapes.pt" and path.is_file()
    assert pretrain.shapes_weights("resnet18", progress=False) == path and made == [path]  # made once, then read
    config = Config(backbone="resnet18", fpn_channels=32, head_convs=1, backbone_weights="shapes")
    model = build_model(config, 5)
    saved = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, saved["layer3.1.conv2.weight"])
    assert not model.backbone.body.conv1.weight.requires_grad  # fine-tuned as from ImageNet: stem fixed
    # a checkpoint's architecture without its weights file: frozen BatchNorm, nothing made or read
    path.unlink()
    bare = build_model(config, 5, load_weights=False)
    assert type(bare.backbone.body.bn1) is type(model.backbone.body.bn1) and not path.exists() and len(made) == 1


def test_the_command_line_writes_into_the_cache_by_default(tmp_path, monkeypatch, capsys):
    import fl_lab.pretrain as pretrain

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["--steps", "2", "--batch-size", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert pretrain.shapes_weights_path("resnet18").is_file()
