"""fl_lab.gpu_check on the CPU with a tiny budget: the code path a lent GPU runs, every stage, file and deadline."""

import json

import pytest
import torch

from fl_lab import gpu_check


def test_the_cpu_path_pretrains_fine_tunes_to_budget_benchmarks_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no ImageNet file: Shapes it is
    assert gpu_check.main(["--device", "cpu", "--minutes", "0.25", "--total", "1.5", "--pretrain-steps", "2",
                           "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/5] wheels", "[2/5] weights", "[3/5] train", "[4/5] bench", "[5/5] report"):
        assert stage in printed
    report = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    assert report["weights"]["source"] == "shapes crops" and report["weights"]["pretrain"]["steps"] == 2
    training = report["training"]
    assert training["preset"] == "cpu-pretrained"
    assert training["config"]["backbone_weights"] == report["weights"]["file"]
    # how many iterations fit depends on this machine's speed and load: at least one, and never more than sized
    assert training["steps"] >= 1 and 1 <= training["steps_run"] <= training["steps"]
    assert training["config"]["steps"] == training["steps"] and training["images_per_s"] > 0
    assert set(training["metrics"]) >= {"AP", "AP50", "AP75"}
    assert set(report["wall_s"]) == {"wheels", "weights", "train", "bench", "total"}
    assert report["installed_wheels"] == []
    assert report["bench"] == "quick" and report["budget_s"] == 90
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "| train |" in summary and "AP50" in summary and "## Benchmarks" in summary and "shapes crops" in summary
    assert (tmp_path / "results" / "bench" / "run_all_cpu.md").is_file()


def test_the_benchmark_is_cut_to_the_time_left_and_stopped_at_its_deadline(tmp_path):
    full, quick = gpu_check.BENCH_SECONDS["full"], gpu_check.BENCH_SECONDS["quick"]
    assert gpu_check.bench_mode("full", full) == "full"
    assert gpu_check.bench_mode("full", full - 1) == "quick"
    assert gpu_check.bench_mode("full", quick - 1) == gpu_check.bench_mode("quick", quick - 1) == "none"
    assert gpu_check.bench_mode("quick", 10 * full) == "quick" and gpu_check.bench_mode("none", 10 * full) == "none"
    report, outcome = gpu_check.run_benchmarks("cpu", "quick", tmp_path, timeout_s=0.5)
    assert report is None and outcome == "quick: stopped at its deadline after 0 s"


def test_bad_options_and_missing_wheels_are_named(tmp_path, monkeypatch, capsys):
    for argv, message in ((["--minutes", "0"], "--minutes must be in (0, 60]"),
                          (["--minutes", "4", "--total", "3"], "--total must be more than --minutes (4.0)"),
                          (["--pretrain-steps", "0"], "--pretrain-steps must be at least 1, got 0")):
        with pytest.raises(SystemExit):
            gpu_check.main(argv)
        assert message in capsys.readouterr().err
    monkeypatch.setattr(gpu_check, "DEPENDENCIES", ("surely_not_an_installed_module",))
    with pytest.raises(SystemExit, match="lacks surely_not_an_installed_module: pass --wheels DIR"):
        gpu_check.install_wheels(None)
    with pytest.raises(SystemExit, match="--wheels .*nowhere: no such folder"):
        gpu_check.install_wheels(tmp_path / "nowhere")
    monkeypatch.setattr(gpu_check, "DEPENDENCIES", ("json",))  # present: nothing to install
    assert gpu_check.install_wheels(None) == []
