"""bench/train_vs_torchvision.py: the configuration both models share, and the script end to end."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

torch.set_grad_enabled(True)

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_vs_torchvision.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_vs_torchvision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
