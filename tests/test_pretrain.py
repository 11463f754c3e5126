"""fl_lab.pretrain: a classification-pretrained backbone made from Shapes crops, loadable as backbone weights."""

import json
import os

import pytest
import torch
import torchvision

from fl_lab.model import RetinaNet
from fl_lab.pretrain import RECIPE, ShapesClassifier, cell_labels, crops, main, pretrain_backbone


def test_crops_hold_one_object_of_a_quarter_to_three_quarters_of_the_side():
    data = crops(20, image_size=64, seed=3)
    sides = []
    for _, target in data:
        assert len(target["labels"]) <= 1
        for x1, y1, x2, y2 in target["boxes"].tolist():
            sides.append(((x2 - x1) * (y2 - y1)) ** 0.5)
    assert len(sides) >= 18 and min(sides) >= 0.2 * 64 and max(sides) <= 0.8 * 64


def test_cell_labels_name_the_smallest_box_over_each_cell_centre():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 8.0, 24.0, 24.0], [48.0, 0.0, 64.0, 64.0]])
    labels = torch.tensor([2, 0, 4])
    cells = cell_labels(boxes, labels, image_size=64, stride=16, background=5)
    # centres at 8, 24, 40, 56: written out by hand, row by row (y), column by column (x)
    assert cells.tolist() == [[0, 2, 5, 4],   # y = 8: (8, 8) lies in boxes 0 and 1: the smaller one, class 0
                              [2, 2, 5, 4],   # y = 24: x = 24 is on box 1's right edge (outside) but in box 0
                              [5, 5, 5, 4],   # y = 40: on box 0's bottom edge, outside
                              [5, 5, 5, 4]]
    empty = cell_labels(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), image_size=64, stride=32, background=5)
    assert empty.tolist() == [[5, 5], [5, 5]]


def test_accuracy_is_the_share_of_images_named_right():
    from fl_lab.pretrain import accuracy

    data = crops(30, image_size=64, seed=5)
    labels = [int(t["labels"][0]) for _, t in data if len(t["labels"])]

    class Always(torch.nn.Module):  # names class 2 whatever it sees
        def forward(self, images):
            return torch.nn.functional.one_hot(torch.full((len(images),), 2), 5).float()

    assert accuracy(Always(), data, batch_size=7) == pytest.approx(labels.count(2) / len(labels))
    assert 0 < labels.count(2) < len(labels)  # the check above is not trivially 0 or 1


@pytest.mark.parametrize("backbone, width", [("resnet18", 1), ("resnet50", 4)])
def test_the_classifier_labels_the_image_and_every_cell_of_c3_to_c5(backbone, width):
    model = ShapesClassifier(backbone, num_classes=5).eval()
    with torch.no_grad():
        image_logits, cells = model(torch.rand(2, 3, 64, 64))
    assert image_logits.shape == (2, 5)
    assert [tuple(c.shape) for c in cells] == [(2, 6, 8, 8), (2, 6, 4, 4), (2, 6, 2, 2)]
    assert [head.in_channels for head in model.cells] == [128 * width, 256 * width, 512 * width]


def test_pretrained_weights_load_into_retinanet(tmp_path):
    summary = pretrain_backbone(tmp_path / "r18.pt", steps=2, batch_size=4, image_size=64, workers=0, progress=False,
                                device="cpu", held_out=20)
    assert summary["steps"] == 2 and summary["dense_weight"] == RECIPE["dense_weight"]
    assert 0 <= summary["held_out_accuracy"] <= 1
    assert json.loads((tmp_path / "r18.pt.json").read_text())["backbone"] == "resnet18"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pt", "r18.pt.json"]  # written, then renamed
    saved = torch.load(tmp_path / "r18.pt", weights_only=True)
    assert not any(key.startswith("cells") for key in saved)  # only the ResNet is kept
    model = RetinaNet(5, backbone="resnet18", fpn_channels=32, head_convs=1, backbone_weights=tmp_path / "r18.pt")
    assert torch.equal(model.backbone.body.layer2[0].conv1.weight, saved["layer2.0.conv1.weight"])
    for bad, message in ((dict(steps=0), "steps >= 1"), (dict(dense_weight=-1.0), "dense_weight >= 0"),
                         (dict(image_size=48), "image_size must be a multiple of 32")):
        with pytest.raises(ValueError, match=message):
            pretrain_backbone(tmp_path / "x.pt", **bad)
    with pytest.raises(SystemExit):
        main(["--steps", "-1", "--out", str(tmp_path / "y.pt")])


def test_the_cell_labels_change_what_the_resnet_learns(tmp_path):
    """The same seed, data and steps with and without the cell labels: only their loss differs."""
    common = dict(steps=2, batch_size=4, workers=0, progress=False, device="cpu", held_out=10)
    pretrain_backbone(tmp_path / "plain.pt", dense_weight=0.0, **common)
    pretrain_backbone(tmp_path / "cells.pt", **common)
    plain, cells = (torch.load(tmp_path / f, weights_only=True) for f in ("plain.pt", "cells.pt"))
    assert not torch.equal(plain["layer3.0.conv1.weight"], cells["layer3.0.conv1.weight"])
    assert not torch.equal(plain["conv1.weight"], cells["conv1.weight"])  # their gradient reaches the stem


def test_shapes_weights_are_made_once_into_the_cache_and_fine_tuned_from_by_name(tmp_path, monkeypatch):
    import fl_lab.pretrain as pretrain
    from fl_lab.train import Config, backbone_weights_file, build_model

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    made = []

    def quick(out, backbone, progress, device, **recipe):  # a 2-step stand-in for the recipe
        assert recipe == RECIPE
        made.append(out)
        return pretrain_backbone(out, backbone, steps=2, batch_size=4, workers=0, progress=False, device=device,
                                 held_out=10)

    monkeypatch.setattr(pretrain, "pretrain_backbone", quick)
    path = pretrain.shapes_weights("resnet18", progress=False)
    assert path.parent == tmp_path / "hub" / "checkpoints" and path.is_file()
    assert path.name.startswith("fl_lab_resnet18_shapes-") and path.suffix == ".pt"
    assert pretrain.shapes_weights("resnet18", progress=False) == path and made == [path]  # made once, then read
    config = Config(backbone="resnet18", fpn_channels=32, head_convs=1, backbone_weights="shapes")
    model = build_model(config, 5)
    saved = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, saved["layer3.1.conv2.weight"])
    assert not model.backbone.body.conv1.weight.requires_grad  # fine-tuned as from ImageNet: stem fixed
    # "pretrained" takes this file while the cache holds no ImageNet weights, and never downloads
    pretrained = Config(**{**vars(config), "backbone_weights": "pretrained"})
    assert backbone_weights_file(pretrained) == str(path) and made == [path]
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    imagenet = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    torch.save(torchvision.models.resnet18().state_dict(), imagenet)  # a stand-in for the download
    assert backbone_weights_file(pretrained) == str(imagenet) and made == [path]  # once cached, ImageNet's
    imagenet.unlink()
    # another recipe is another file: a cached backbone of an older or shorter recipe is never taken for this one
    assert pretrain.shapes_weights_path("resnet18", steps=RECIPE["steps"] + 1) != path
    assert pretrain.shapes_weights_path("resnet18", **RECIPE) == path
    with pytest.raises(ValueError, match=r"unknown recipe settings \['epochs'\]"):
        pretrain.shapes_weights_path("resnet18", epochs=3)
    # a checkpoint's architecture without its weights file: frozen BatchNorm, nothing made or read
    path.unlink()
    bare = build_model(config, 5, load_weights=False)
    assert type(bare.backbone.body.bn1) is type(model.backbone.body.bn1) and not path.exists() and len(made) == 1


def test_the_command_line_writes_into_the_cache_under_its_recipe_by_default(tmp_path, monkeypatch, capsys):
    import fl_lab.pretrain as pretrain

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["--steps", "2", "--batch-size", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert pretrain.shapes_weights_path("resnet18", steps=2, batch_size=4).is_file()
    assert not pretrain.shapes_weights_path("resnet18").exists()  # the default recipe's file is another
