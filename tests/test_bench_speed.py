"""bench/focal_loss.py, bench/notebooks.py and bench/run_all.py run end to end and write their
results. Timings are the benchmarks' business: nothing here asserts a speed."""

import json

import pytest
from bench_scripts import load


def test_focal_loss_bench_runs_and_writes_json(tmp_path, capsys):
    payload = load("focal_loss").main(["--quick", "--device", "cpu", "--repeats", "1", "--results", str(tmp_path)])
    (row,) = payload["rows"]
    assert set(row["ms"]) == {"fl_lab", "fl_lab reference", "tv", "tv + one-hot"}
    assert all(ms > 0 for ms in row["ms"].values()) and row["copy_ms"] > 0
    assert all(mib > 0 for mib in row["peak_mib"].values())  # every path allocates at least its gradient
    written = json.loads((tmp_path / "focal_loss_cpu.json").read_text())
    assert written["rows"][0]["shape"] == [2000, 80] and "machine" in written
    assert "tv / fl" in capsys.readouterr().out


def test_focal_loss_bench_inputs_agree_with_torchvision():
    bench = load("focal_loss")
    logits, target = bench.make_inputs(500, 6, device=__import__("torch").device("cpu"))
    keep, dense = bench.one_hot_valid(logits, target)
    assert dense.shape == (int(keep.sum()), 6)
    assert dense.sum() == (target >= 0).sum()  # one 1 per foreground row, none for background
    assert (target == -2).any() and (target >= 0).any()


def test_peak_memory_counts_what_a_call_allocates():
    import torch

    common = load("common")
    mib = common.peak_memory_mib(lambda: torch.ones(1024, 1024).add_(1), torch.device("cpu"))  # 4 MiB
    assert 3.9 < mib < 8.5


def test_notebook_timer_reports_pass_and_fail(tmp_path):
    good, bad = tmp_path / "test_good.py", tmp_path / "test_bad.py"
    good.write_text("def test_ok():\n    assert True\n")
    bad.write_text("def test_no():\n    assert False\n")
    payload = load("notebooks").main([str(good), str(bad), "--results", str(tmp_path)])
    rows = {r["notebook"]: r for r in payload["rows"]}
    assert rows["test_good.py"]["passed"] and not rows["test_bad.py"]["passed"]
    assert all(r["seconds"] > 0 for r in rows.values())
    assert json.loads((tmp_path / "notebooks_cpu.json").read_text())["nbval_suite_s"] == pytest.approx(
        payload["nbval_suite_s"])
