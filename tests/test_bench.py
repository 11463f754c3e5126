"""bench/train_vs_torchvision.py: the torchvision adapter is torchvision's own model, and the script runs end to end."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from fl_lab.model import RetinaNet

torch.set_grad_enabled(True)

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_vs_torchvision.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_vs_torchvision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def identity_transform_model(bench, size):
    """torchvision's RetinaNet whose own transform leaves a normalised (size, size) batch as it is."""
    tv = bench.build_torchvision(3, "resnet18", seed=0)
    tv.transform = GeneralizedRCNNTransform(size, size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size_divisible=128,
                                            fixed_size=(size, size))
    return tv


def targets():
    return [
        {"boxes": torch.tensor([[10.0, 12, 50, 40], [30, 5, 62, 60]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects: all background
        {"boxes": torch.tensor([[0.0, 0, 120, 100]]), "labels": torch.tensor([1])},
    ]


def test_adapter_loss_equals_torchvision_forward(bench):
    """Compared with torchvision's full RetinaNet.forward(images, targets), its transform made an identity."""
    tv = identity_transform_model(bench, 128)
    adapter = bench.TorchvisionAdapter(tv).train()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 128, 128)
    output = adapter(images)
    assert (output.cls_logits.shape == (3, sum(output.anchors_per_level), 3)
            and output.anchors.shape == (sum(output.anchors_per_level), 4))
    losses = adapter.loss(output, targets(), loss_fn="focal", normalize="batch")  # fl_lab's options are ignored
    expected = tv(list(images), targets())
    assert torch.allclose(losses["cls"], expected["classification"], rtol=1e-6)
    assert torch.allclose(losses["box"], expected["bbox_regression"], rtol=1e-6)
    assert torch.equal(losses["total"], losses["cls"] + losses["box"])
    assert 0 < int(losses["num_foreground"]) < len(output.anchors)
    losses["total"].backward()
    assert tv.head.classification_head.cls_logits.weight.grad.abs().sum() > 0
    assert tv.backbone.body.conv1.weight.grad.abs().sum() > 0  # trained from the stem up, like fl_lab's


def test_adapter_detect_equals_torchvision_eval_in_fl_labs_format(bench):
    tv = identity_transform_model(bench, 128)
    with torch.no_grad():
        tv.head.classification_head.cls_logits.bias.fill_(-1.0)  # p ≈ 0.27: many detections to compare
    adapter = bench.TorchvisionAdapter(tv).eval()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        dets = adapter.detect(adapter(images), [(128, 128)] * 2, max_detections=150)
        expected = tv(list(images))  # postprocess_detections with the settings detect just gave it
        fl_lab_det = RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=0).eval()
        reference = fl_lab_det.detect(fl_lab_det(images), [(128, 128)] * 2)
    for det, exp, ref in zip(dets, expected, reference, strict=True):
        assert len(det["boxes"]) == 150
        assert set(det) == set(ref) == {"boxes", "scores", "labels"}
        for key in det:
            assert torch.equal(det[key], exp[key])
            assert det[key].dtype == ref[key].dtype and det[key].shape[1:] == ref[key].shape[1:]
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])


def test_bench_config_uses_torchvisions_fixed_widths(bench):
    config = bench.bench_config("cpu-fast", steps=7, image_size=None)
    assert (config.fpn_channels, config.head_convs) == (256, 4)
    assert config.steps == 7 and config.image_size == 128 and config.backbone == "resnet18"
    assert bench.bench_config("gpu").amp == "bf16"


def test_main_runs_both_models_and_prints_the_table(bench, tmp_path, capsys):
    path = tmp_path / "bench.json"
    result = bench.main(["--image-size", "64", "--train-images", "8", "--val-images", "2", "--steps", "3",
                         "--batch-size", "2", "--backbone", "resnet18", "--workers", "0", "--device", "cpu",
                         "--no-progress", "--json", str(path)])
    fl_lab, tv = result["rows"]
    assert (fl_lab["model"], tv["model"]) == ("fl_lab", "torchvision")
    for row in (fl_lab, tv):
        for key in ("AP", "AP50", "AP75", "train_images_per_s", "eval_s", "final_loss"):
            assert math.isfinite(row[key]), (row["model"], key)
        assert row["train_images_per_s"] > 0 and 0 <= row["AP"] <= row["AP50"] <= 1
    # The same ResNet-18, FPN and heads; only P6's input differs (fl_lab: C5, 512 channels; torchvision: P5, 256).
    assert fl_lab["params"] - tv["params"] == (512 - 256) * 256 * 9
    ratio = result["ratio"]
    assert math.isclose(ratio["train_images_per_s"], fl_lab["train_images_per_s"] / tv["train_images_per_s"])
    for key in ("AP", "AP50", "AP75"):  # None where torchvision's AP is 0 (likely after 3 steps)
        assert ratio[key] is None if tv[key] == 0 else math.isclose(ratio[key], fl_lab[key] / tv[key])
    table = capsys.readouterr().out.splitlines()[-5:]  # header, rule, fl_lab, torchvision, ratio
    assert "train img/s" in table[0]
    assert [line.split()[0] for line in table[2:4]] == ["fl_lab", "torchvision"]
    assert table[4].startswith("fl_lab / torchvision")
    assert f"{fl_lab['train_images_per_s']:.2f}" in table[2] and f"{ratio['train_images_per_s']:.2f}" in table[4]
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert result["config"]["fpn_channels"] == 256 and result["config"]["steps"] == 3
