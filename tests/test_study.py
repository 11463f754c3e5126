"""fl_lab.study: the FL-vs-CE study's rows, folders, runner, claims and command line."""

import dataclasses
import json
from pathlib import Path

import pytest

from fl_lab import study
from fl_lab.ablations import table1_base, table1_grid
from fl_lab.analysis import FAILS, HOLDS
from fl_lab.experiment import ArmResult, RunRecord
from fl_lab.train import PRESETS, Config


def test_the_base_is_the_regime_its_committed_results_were_measured_in():
    # results/fl_vs_ce was trained in exactly this regime: a change here would silently disown it
    measured = dict(dataset="shapes", image_size=128, train_images=4000, val_images=200, num_classes=5, min_objects=1,
                    max_objects=1, empty_fraction=0.0, min_object_size=32.0, backbone="resnet18", fpn_channels=64,
                    head_convs=2, head_norm="gn", backbone_weights=None, prior=0.01, loss_fn="focal", gamma=2.0,
                    alpha=None, box_loss="l1", normalize="ema", steps=500, batch_size=8, lr=0.02, warmup=50,
                    momentum=0.9, weight_decay=1e-4, amp="none", seed=0, log_every=10, checkpoint_every=0)
    assert {k: study.STUDY_BASE[k] for k in measured} == measured
    saved = json.loads((Path(__file__).resolve().parents[1] / "results/fl_vs_ce/study.json").read_text())["base"]
    assert {k: saved[k] for k in measured} == measured


def test_rows_change_one_factor_and_share_identical_runs(tmp_path):
    rows = study.study_rows()
    sweeps = {r.sweep for r in rows}
    assert sweeps == {study.REFERENCE, study.IMBALANCE, study.SCHEDULE, study.SPARSE, study.LR, study.SCALE,
                      study.PRETRAINED}
    for r in rows:
        # one factor (a schedule's length comes with its warm-up); the sparse schedule on the sparsest
        # data, the schedule in the lessons' regime (pretrained weights)
        held = {study.SPARSE: "empty_fraction", study.SCHEDULE: "backbone_weights"}.get(r.sweep)
        factor = {k: v for k, v in r.overrides.items() if k != held}
        assert len(factor) <= 2 and study.FL in r.arms and study.BEST_CE in r.arms
        for arm in r.arms:
            study.config_of(r, arm, tmp_path)  # every override is a Config field
    reference = next(r for r in rows if r.sweep == study.REFERENCE)
    assert {"α-CE α=0.5", "α-CE α=0.75", "α-CE α=0.9", "CE without prior init"} <= set(reference.arms)
    folders = {study.config_of(r, study.FL, tmp_path).out for r in rows if not r.overrides}
    assert len(folders) == 1  # the reference run is made once for every sweep that has it
    assert folders == {str(tmp_path / "base" / "FL_γ=2_α=0.25")}
    # Table 1's arms are the same runs: same configuration, same folder
    grid = {a.name: a for a in table1_grid()}
    for name in ("FL γ=2 α=0.25", "α-CE α=0.75", "CE without prior init"):
        row_config = study.config_of(reference, name, tmp_path)
        assert row_config == dataclasses.replace(table1_base(gpu=False), **grid[name].overrides, out=row_config.out)
    imbalance = [study.config_of(r, study.FL, tmp_path) for r in rows if r.sweep == study.IMBALANCE]
    assert [c.empty_fraction for c in imbalance] == sorted(c.empty_fraction for c in imbalance)
    sparse = [study.config_of(r, study.FL, tmp_path) for r in rows if r.sweep == study.SPARSE]
    assert {c.empty_fraction for c in sparse} == {imbalance[-1].empty_fraction} and len(sparse) >= 2
    assert [c.steps for c in sparse] == sorted({c.steps for c in sparse})
    sparsest_row = next(r for r in rows if r.sweep == study.IMBALANCE and r.overrides == study.SPARSEST)
    # its 500 iterations: the same runs, in the folder named by the one factor changed from the base
    assert sparse[0].out == study.config_of(sparsest_row, study.FL, tmp_path).out == \
        str(tmp_path / "empty_fraction=0.8333" / "FL_γ=2_α=0.25")
    # the imbalance sweep again from pretrained weights: the same data, one change; folders named by the weights file
    pretrained = [study.config_of(r, study.FL, tmp_path) for r in rows if r.sweep == study.PRETRAINED]
    assert len(pretrained) == len(imbalance) >= 3
    for scratch, warm in zip(imbalance, pretrained, strict=True):
        assert scratch.backbone_weights is None
        assert warm == dataclasses.replace(scratch, backbone_weights=study.PRETRAINED_WEIGHTS, out=warm.out)
    assert pretrained[1].out == str(tmp_path / "backbone_weights=resnet18_shapes" / "FL_γ=2_α=0.25")
    searched = [r for r in rows if r.sweep == study.PRETRAINED and r.arms == study.SEARCH]
    assert len(searched) == 1 and set(study.SEARCH) == set(reference.arms) - {"CE without prior init"}
    assert searched[0].seeds == study.LESSON_SEEDS and len(study.LESSON_SEEDS) == 5  # the lesson regime: more seeds
    # the schedule sweep is that regime at 250 / 500 / 1000 iterations; its 500 are that row's runs
    schedule = [study.config_of(r, study.FL, tmp_path) for r in rows if r.sweep == study.SCHEDULE]
    assert [c.steps for c in schedule] == [250, 500, 1000] and [c.warmup for c in schedule] == [25, 50, 100]
    assert {c.backbone_weights for c in schedule} == {study.PRETRAINED_WEIGHTS}
    assert schedule[1].out == study.config_of(searched[0], study.FL, tmp_path).out == \
        str(tmp_path / "backbone_weights=resnet18_shapes" / "FL_γ=2_α=0.25")
    assert schedule[0].out == str(tmp_path / "backbone_weights=resnet18_shapes_steps=250_warmup=25" / "FL_γ=2_α=0.25")
    # the lessons' cpu-pretrained preset is that row's FL arm (its weights asked for by name) but for the
    # learning rate: 0.01, both losses' choice in results/confirm, where the study trained at 0.02
    lesson = Config(**PRESETS["cpu-pretrained"], alpha=0.25)  # α None: the focal loss's own, 0.25, which the arm names
    bookkeeping = {"out", "log_every", "checkpoint_every", "backbone_weights"}
    measured = study.config_of(searched[0], study.FL, tmp_path)
    differs = {f for f in Config.__dataclass_fields__
               if f not in bookkeeping and getattr(lesson, f) != getattr(measured, f)}
    assert differs == {"lr"} and (lesson.lr, measured.lr) == (0.01, 0.02)
    assert lesson.backbone_weights == "shapes" and Config(**PRESETS["cpu-fast"]).backbone_weights is None
    assert {study.ARMS[a].overrides["loss_fn"] for a in study.SEARCH} == {"focal", "balanced_ce"}  # both searched


def fake(row, aps_by_arm, imbalance=90.0):
    arms = {arm: ArmResult(study.ARMS[arm],
                           [RunRecord({"seed": s, "steps": 500}, {"AP": a, "AP50": a}, None, {}, 1.0, "")
                            for s, a in enumerate(aps)])
            for arm, aps in aps_by_arm.items()}
    return study.RowResult(row, arms, imbalance)


def test_gap_claims_take_the_best_alpha_ce_and_each_loss_at_its_best_lr():
    ref = study.Row(study.REFERENCE, "ref", {}, (study.FL, "FL γ=2 α=0.5", "α-CE α=0.5", study.BEST_CE))
    results = [
        fake(ref, {study.FL: [0.30, 0.31, 0.32], "FL γ=2 α=0.5": [0.33, 0.34, 0.32], "α-CE α=0.5": [0.20, 0.21, 0.19],
                   study.BEST_CE: [0.25, 0.26, 0.24]}),
        fake(study.Row(study.LR, "lr 0.01", {"lr": 0.01}),
             {study.FL: [0.1, 0.1, 0.11], study.BEST_CE: [0.4, 0.41, 0.4]}),
        fake(study.Row(study.LR, "lr 0.05", {"lr": 0.05}),
             {study.FL: [0.5, 0.51, 0.5], study.BEST_CE: [0.2, 0.1, 0.3]}),
    ]
    assert (results[0].best("balanced_ce"), results[0].best("focal")) == (study.BEST_CE, "FL γ=2 α=0.5")
    claims = study.gap_claims(results)
    assert "beats α-CE α=0.75" in claims[0].text and claims[0].verdict == HOLDS  # the best α-CE, not α = .5
    assert "FL at its best α (FL γ=2 α=0.5) beats α-CE at its best α (α-CE α=0.75)" in claims[2].text
    assert claims[3].verdict == FAILS and claims[4].verdict == HOLDS
    assert "FL (lr 0.05) beats α-CE (lr 0.01)" in claims[5].text and claims[5].verdict == HOLDS
    table = study.format_rows(results)
    assert "31.0 ± 1.0" in table and "90:1" in table
    lines = table.splitlines()  # the columns line up whatever the sweeps' names: each row's label under "row"
    assert lines[2].index(" ref ") + 1 == lines[0].index("row") == lines[6].index("lr 0.01") > len("learning rate")
    five = fake(study.Row(study.PRETRAINED, "five seeds", {}), {study.FL: [0.3] * 5, study.BEST_CE: [0.2] * 5})
    lines = study.format_rows(results + [five]).splitlines()  # "(n=5)" widens the columns instead of running on
    assert {len(line) for line in lines} == {len(lines[0])} and "30.0 ± 0.0 (n=5)  " in lines[-2] + "  "
    assert "AP of each seed" not in table
    assert "30.0 / 31.0 / 32.0" in study.format_rows(results, per_seed=True)  # seed order, ×100


def test_a_tiny_study_runs_reads_back_and_writes_its_results(tmp_path, monkeypatch, capsys):
    base = {**study.STUDY_BASE, "steps": 2, "warmup": 1, "train_images": 8, "val_images": 4, "workers": 0,
            "fpn_channels": 32, "head_convs": 1}
    rows = [study.Row(study.IMBALANCE, "1 object", {}), study.Row(study.IMBALANCE, "sparse", {"empty_fraction": 0.5}),
            study.Row(study.SCHEDULE, "3 iterations", {"steps": 3})]
    monkeypatch.setattr(study, "STUDY_BASE", base)
    monkeypatch.setattr(study, "SEEDS", (0, 1))
    monkeypatch.setattr(study, "IMBALANCE_IMAGES", 40)
    monkeypatch.setattr(study, "FIGURE4_IMAGES", 6)
    weights = tmp_path / "pretrain" / "r18.pt"  # missing: the study makes it first (a 2-step stand-in here)
    rows = ([study.Row(study.REFERENCE, study.ONE_OBJECT, {}, study.HEADLINE)] + rows  # a row's own seeds:
            + [study.Row(study.PRETRAINED, study.ONE_OBJECT, {"backbone_weights": str(weights)}, seeds=(0, 1, 2))])
    monkeypatch.setattr(study, "study_rows", lambda: rows)
    real_pretrain = study.pretrain_backbone
    monkeypatch.setattr(study, "pretrain_backbone", lambda out, progress, **recipe: real_pretrain(
        out, **{**recipe, "steps": 2, "batch_size": 4}, workers=0, progress=progress, held_out=10))
    assert study.main(["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]) == 0
    printed = capsys.readouterr().out
    assert "sparse" in printed and "FL γ=2 α=0.25 beats α-CE α=0.75" in printed
    saved = json.loads((tmp_path / "res" / "study.json").read_text())
    assert [r["label"] for r in saved["rows"]] == [study.ONE_OBJECT, "1 object", "sparse", "3 iterations",
                                                   study.ONE_OBJECT]
    arms = [{a["name"]: a["runs"] for a in r["arms"]} for r in saved["rows"]]
    assert arms[4][study.FL][0]["config"]["backbone_weights"] == str(weights)
    assert saved["pretrained"][str(weights)]["steps"] == 2  # how the backbone was made, kept with the results
    assert saved["pretrained"][str(weights)]["dense_weight"] == 0.0  # the earlier recipe, as committed
    assert f"pretrained backbone {weights}: resnet18, 2 iterations of 4 Shapes crops at 64 px (seed 0)" in printed
    assert saved["rows"][2]["imbalance"] > saved["rows"][1]["imbalance"]  # empty images: more negatives per positive
    arm = arms[1][study.FL]
    assert [run["config"]["seed"] for run in arm] == [0, 1] and arm[0]["config"]["steps"] == 2
    # the claims written are those judged again from the written runs (2 steps: mostly nothing detected yet)
    assert saved["claims"] == [dataclasses.asdict(c) for c in study.gap_claims(study.load_results(tmp_path / "res" /
                                                                                                 "study.json"))]
    figure4 = json.loads((tmp_path / "res" / "figure4.json").read_text())  # Figure 4 of each FL seed's model
    assert [s["seed"] for s in figure4["seeds"]] == [0, 1] and figure4["images"] == 6
    assert set(figure4["seeds"][0]["shares"]) == {f"{k} γ={g}" for k in ("positives", "negatives")
                                                  for g in (0, 0.5, 1, 2)}
    assert len(figure4["seeds"][0]["claims"]) == 4 and "hardest samples" in printed
    figure4 = json.loads((tmp_path / "res" / "figure4_pretrained.json").read_text())  # and the fine-tuned models'
    assert [s["seed"] for s in figure4["seeds"]] == [0, 1, 2]  # that row's own seeds
    assert [run["config"]["seed"] for run in arms[4][study.FL]] == [0, 1, 2]
    assert study.load_pretrained(tmp_path / "res" / "study.json") == saved["pretrained"]
    for name in ("gap_vs_imbalance.png", "gap_vs_schedule.png", "gap_vs_imbalance_pretrained.png", "study.txt",
                 "figure4.txt", "figure4_pretrained.txt"):
        assert (tmp_path / "res" / name).stat().st_size > 500
    assert (tmp_path / "res" / "study.txt").read_text().startswith("$ python -m fl_lab.study --out")
    loaded = study.load_results(tmp_path / "res" / "study.json")  # what lesson 06 reads
    assert study.format_rows(loaded) in printed and [r.row.label for r in loaded] == [r.label for r in rows]
    assert study.gap_points(loaded, study.IMBALANCE)[1][0] == saved["rows"][2]["imbalance"]
    assert [p[0] for p in study.gap_points(loaded, study.SCHEDULE)] == [3]
    assert [p[0] for p in study.gap_points(loaded, study.PRETRAINED)] == [saved["rows"][4]["imbalance"]]
    # the shared "1 object" runs were made once: its folder holds two seeds of each arm
    assert sorted(p.name for p in (tmp_path / "runs" / "base").iterdir()) == ["FL_γ=2_α=0.25", "α-CE_α=0.75"]
    with pytest.raises(SystemExit):
        study.main(["--sweeps", "nonsense"])
    assert "--sweeps" in capsys.readouterr().err
