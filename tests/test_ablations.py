"""fl_lab.ablations: Table 1's grid, the runner (tiny real runs), the orderings and the figure."""

import dataclasses
import json

import pytest

from fl_lab import plots
from fl_lab.ablations import (Ablation, AblationResult, check_orderings, format_table, run_ablations, table1_base,
                             table1_grid)
from fl_lab.analysis import format_claims
from fl_lab.train import Config


def test_grid_follows_the_paper():
    grid = table1_grid()
    names = [a.name for a in grid]
    assert len(grid) == len(set(names)) == 16
    paper = {a.name: a.paper for a in grid}
    # Table 1a/1b as in ../shared/PAPER.md
    assert paper["α-CE α=0.75"] == (31.1, 49.4, 33.0) and paper["α-CE α=0.25"] == (10.8,)
    assert paper["FL γ=2 α=0.25"] == (34.0, 52.5, 36.5) and paper["FL γ=0.5 α=0.5"] == (32.9,)
    assert paper["OHEM B=128 nms=0.5"] == (32.8, 50.3, 35.1)
    focal = {a.overrides["gamma"]: a.overrides["alpha"] for a in grid if a.overrides["loss_fn"] == "focal"}
    assert focal == {0.5: 0.5, 1.0: 0.25, 2.0: 0.25, 5.0: 0.25}  # the paper's best α per γ
    ohem = [a.overrides for a in grid if a.overrides["loss_fn"] == "ohem"]
    assert {(o["ohem_batch"], o["ohem_nms"]) for o in ohem} == {(128, 0.5), (128, 0.7), (256, 0.5), (256, 0.7)}
    assert sum(o["ohem_max_pos_fraction"] == 0.25 for o in ohem) == 2
    no_prior = [a for a in grid if "prior" in a.overrides]
    assert len(no_prior) == 1 and no_prior[0].overrides["prior"] is None
    fast = table1_grid(fast=True)
    assert len(fast) == 4 and {a.name for a in fast} <= set(names)
    for a in grid:  # every override is a Config field
        dataclasses.replace(Config(), **a.overrides)


def tiny(out, **kw) -> Config:
    return Config(**{**dict(image_size=128, train_images=8, val_images=4, num_classes=2, backbone="resnet18",
                            fpn_channels=16, head_convs=1, batch_size=2, steps=3, warmup=1, lr=0.01, workers=0,
                            out=str(out), checkpoint_every=0, log_every=1, device="cpu"), **kw})


def test_runner_trains_evaluates_reads_back_and_records_divergence(tmp_path):
    grid = [
        Ablation("fl", "g1", dict(loss_fn="focal")),
        Ablation("ohem", "g2", dict(loss_fn="ohem", ohem_batch=16)),
        Ablation("blow up", "g3", dict(loss_fn="ce", prior=None, lr=1e8, warmup=0)),
    ]
    results = run_ablations(grid, tiny(tmp_path / "base"), tmp_path / "abl", progress=False)
    fl, ohem, blow = results
    assert set(fl.metrics) >= {"AP", "AP50", "AP75"} and 0.0 <= fl.metrics["AP"] <= 1.0
    assert ohem.metrics is not None and ohem.diverged_at is None and ohem.final_loss > 0
    assert blow.metrics is None and blow.diverged_at is not None and blow.ap == 0.0
    record = json.loads((tmp_path / "abl" / "ohem" / "ablation.json").read_text())
    assert record["config"]["loss_fn"] == "ohem" and record["config"]["ohem_batch"] == 16
    assert (tmp_path / "abl" / "fl" / "metrics.json").is_file() and ohem.out == str(tmp_path / "abl" / "ohem")

    again = run_ablations(grid[:1], tiny(tmp_path / "base"), tmp_path / "abl", progress=False)
    assert again[0].seconds == fl.seconds and again[0].final_loss == fl.final_loss  # read back, not retrained
    assert json.dumps(again[0].metrics) == json.dumps(fl.metrics)  # (NaN for empty size ranges != NaN)
    changed = run_ablations(grid[:1], tiny(tmp_path / "base", steps=2), tmp_path / "abl", progress=False)
    assert json.loads((tmp_path / "abl" / "fl" / "ablation.json").read_text())["config"]["steps"] == 2
    assert changed[0].final_loss != fl.final_loss  # a changed base config trains again

    table = format_table(results)
    assert "diverged at iteration" in table and table.splitlines()[2] == "g1"
    fig = plots.ablations_figure(results)
    ours, paper = fig.axes
    assert [t.get_text() for t in ours.get_yticklabels()] == ["fl", "ohem", "blow up"]
    assert list(ours.get_yticks()) == [2, 1, 0]  # the first run on top
    assert ours.get_xlabel() and paper.get_xlabel() and ours.get_legend() is not None


def test_runner_rejects_an_unknown_field(tmp_path):
    with pytest.raises(ValueError, match="bad"):
        run_ablations([Ablation("bad", "g", dict(learning_rate=1))], tiny(tmp_path), tmp_path, progress=False)


def result(ablation: Ablation, ap=None, diverged_at=None) -> AblationResult:
    metrics = None if ap is None else {"AP": ap, "AP50": ap, "AP75": ap}
    return AblationResult(ablation, metrics, diverged_at, 1.0, 1.0, "nowhere")


def test_orderings_are_checked_not_assumed():
    grid = {a.name: a for a in table1_grid()}
    fl, ce75, ce50, ohem, no_prior = (grid[n] for n in ("FL γ=2 α=0.25", "α-CE α=0.75", "α-CE α=0.5",
                                                       "OHEM B=128 nms=0.5", "CE (α=.5) without prior init"))
    good = check_orderings([result(fl, 0.30), result(ce75, 0.25), result(ce50, 0.2), result(ohem, 0.28),
                            result(no_prior, diverged_at=12)])
    assert [c.holds for c in good] == [True, True, True]
    assert "diverged at iteration 12" in good[2].detail and "30.0 vs 25.0" in good[0].detail
    bad = check_orderings([result(fl, 0.10), result(ce75, 0.25), result(ohem, 0.10), result(no_prior, 0.3)])
    assert [c.holds for c in bad] == [False, False, False]  # a tie is not a win; no-prior vs best α-CE
    assert "does NOT hold" in format_claims(bad)
    partial = check_orderings([result(fl, 0.3)])
    assert [c.holds for c in partial] == [None, None, None] and "not tested" in format_claims(partial)


def test_bases_share_everything_but_size():
    fast, gpu, cpu = table1_base(gpu=False, fast=True), table1_base(gpu=True), table1_base(gpu=False)
    assert fast.steps == 150 and cpu.steps == 500 and gpu.steps == 1000 and gpu.amp == "bf16"
    assert table1_base(gpu=True, fast=True) == fast  # fast mode wins, whatever the device
    for config in (fast, gpu, cpu):
        assert config.log_every == 1 and config.loss_fn == "focal" and config.prior == 0.01


def test_command_line_writes_table_json_and_figure(tmp_path, monkeypatch, capsys):
    from fl_lab import ablations

    monkeypatch.setattr(ablations, "table1_base", lambda gpu, fast=False: tiny(tmp_path / "base", steps=2))
    monkeypatch.setattr(ablations, "table1_grid", lambda fast=False: [ablations.FL_GAMMA_2, ablations.NO_PRIOR])
    assert ablations.main(["--device", "cpu", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]) == 0
    printed = capsys.readouterr().out
    assert "FL γ=2 α=0.25" in printed and "not tested" in printed  # no α-CE in this grid
    saved = json.loads((tmp_path / "res" / "table1.json").read_text())
    assert saved["device"] == "CPU" and [r["name"] for r in saved["runs"]] == ["FL γ=2 α=0.25", NO_PRIOR_NAME]
    assert saved["runs"][0]["paper"] == [34.0, 52.5, 36.5] and saved["base"]["device"] == "cpu"
    assert (tmp_path / "res" / "table1.png").stat().st_size > 1000
    assert (tmp_path / "res" / "table1.txt").read_text().startswith("$ python -m fl_lab.ablations --device cpu")


NO_PRIOR_NAME = "CE (α=.5) without prior init"
