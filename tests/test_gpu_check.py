"""fl_lab.gpu_check on the CPU with a tiny budget: the code path a lent GPU runs, every stage and file."""

import json

import pytest

from fl_lab import gpu_check


def test_the_cpu_path_trains_to_budget_benchmarks_and_reports(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--minutes", "0.2", "--results", str(tmp_path / "results"),
                           "--runs", str(tmp_path / "runs")]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/4] wheels", "[2/4] train", "[3/4] bench", "[4/4] report"):
        assert stage in printed
    report = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    training = report["training"]
    assert training["preset"] == "cpu-fast" and training["steps"] >= 3 and 0 <= training["metrics"]["AP"] <= 1
    assert training["config"]["steps"] == training["steps"] and training["images_per_s"] > 0
    assert set(report["wall_s"]) == {"wheels", "train", "bench", "total"} and report["installed_wheels"] == []
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "| train |" in summary and "AP50" in summary and "## Benchmarks" in summary
    assert (tmp_path / "results" / "bench" / "run_all_cpu.md").is_file()


def test_bad_options_and_missing_wheels_are_named(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--minutes", "0"])
    assert "--minutes must be in (0, 60]" in capsys.readouterr().err
    monkeypatch.setattr(gpu_check, "DEPENDENCIES", ("surely_not_an_installed_module",))
    with pytest.raises(SystemExit, match="lacks surely_not_an_installed_module: pass --wheels DIR"):
        gpu_check.install_wheels(None)
    with pytest.raises(SystemExit, match="--wheels .*nowhere: no such folder"):
        gpu_check.install_wheels(tmp_path / "nowhere")
    monkeypatch.setattr(gpu_check, "DEPENDENCIES", ("json",))  # present: nothing to install
    assert gpu_check.install_wheels(None) == []
