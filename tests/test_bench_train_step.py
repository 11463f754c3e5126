"""bench/train_step.py: both models take real training steps on the same batch, and the script runs end to end."""

import json
import math

import pytest
import torch
from bench_scripts import load

torch.set_grad_enabled(True)

@pytest.fixture(scope="module")
def bench():
    return load("train_step")


def test_one_step_of_each_model_on_the_same_batch(bench):
    case = bench.Case("resnet18", 128, 2)
    batch, both = bench.contenders(case, torch.device("cpu"))
    assert set(both) == {"fl_lab", "torchvision"}
    assert batch.images.shape == (2, 3, 128, 128) and all(len(t["boxes"]) for t in batch.targets)
    for name, contender in both.items():
        before = [p.detach().clone() for p in contender.model.parameters()]
        loss = bench.train_step(contender, batch, bf16=False)
        assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0, name
        # The SGD step moved the weights, from the output convs down to the stem.
        moved = [not torch.equal(b, p) for b, p in zip(before, contender.model.parameters(), strict=True)]
        assert sum(moved) > 0.9 * len(moved), name


def test_main_quick_writes_rows_and_json(bench, tmp_path, capsys):
    payload = bench.main(["--quick", "--device", "cpu", "--repeats", "1", "--results", str(tmp_path)])
    (row,) = payload["rows"]
    for name in ("fl_lab", "torchvision"):
        assert row[f"{name}_ms"] > 0 and row[f"{name}_images_per_s"] > 0 and row[f"{name}_gflop"] > 0
        assert row[f"{name}_mfu"] is None  # no peak for a CPU unless --peak-tflops gives one
    assert math.isclose(row["speedup"], row["torchvision_ms"] / row["fl_lab_ms"])
    # The same backbone, FPN and heads: the FLOPs differ only by P6's input (C5 or P5).
    assert math.isclose(row["fl_lab_gflop"], row["torchvision_gflop"], rel_tol=0.01)
    (loop,) = payload["loop_rows"]  # the training loop reading back every step, and every 20
    assert loop["every_step_ms"] > 0 and loop["every_log_ms"] > 0
    assert math.isclose(loop["speedup"], loop["every_step_ms"] / loop["every_log_ms"])
    saved = json.loads((tmp_path / "train_step_cpu.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"])) and saved["table"] == payload["table"]
    out = capsys.readouterr().out
    assert payload["table"] in out and row["case"] in out


def test_peak_option(bench):
    peaks, note = bench.peaks_and_note(torch.device("cpu"), [(None, 2.0), ("bf16", 5.0)])
    assert peaks == {"fp32": 2.0, "bf16": 5.0} and "fp32 2" in note
    with pytest.raises(SystemExit):  # argparse rejects an unknown precision
        bench._parser().parse_args(["--peak-tflops", "fp16=3"])
