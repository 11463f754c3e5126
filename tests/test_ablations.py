"""fl_lab.ablations: Table 1's grid, the runner (tiny real runs), the orderings and the figure."""

import dataclasses
import json
from pathlib import Path

import pytest

from fl_lab import ablations, confirm, plots
from fl_lab.ablations import check_orderings, figure_rows, format_table, run_ablations, table1_base, table1_grid
from fl_lab.analysis import FAILS, HOLDS, NOT_TESTED, WITHIN_NOISE, format_claims
from fl_lab.experiment import Arm, ArmResult, RunRecord, slug
from fl_lab.train import PRESETS, Config

ROOT = Path(__file__).parents[1]


def test_grid_follows_the_paper():
    grid = table1_grid()
    names = [a.name for a in grid]
    assert len(grid) == len(set(names)) == 18
    assert not any("," in name for name in names)  # --rows takes a comma-separated list of them
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
    anchors = {(a.overrides["anchor_scales"], a.overrides["anchor_ratios"]): a.paper for a in grid
               if "anchor_scales" in a.overrides}
    assert anchors == {(1, 1): (30.3,), (3, 1): (31.8,)}  # Table 1c; 3×3 is the FL γ=2 row
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


def test_runner_trains_seeds_reads_back_and_records_divergence(tmp_path):
    grid = [
        Arm("fl", "g1", dict(loss_fn="focal")),
        Arm("ohem", "g2", dict(loss_fn="ohem", ohem_batch=16)),
        Arm("blow up", "g3", dict(loss_fn="ce", prior=None, lr=1e8, warmup=0)),
    ]
    results = run_ablations(grid, tiny(tmp_path / "base"), tmp_path / "abl", seeds=(0, 1), progress=False)
    fl, ohem, blow = results
    assert [r.seed for r in fl.runs] == [0, 1] and fl.stats().n == 2
    assert set(fl.runs[0].metrics) >= {"AP", "AP50", "AP75"} and 0.0 <= fl.ap <= 1.0
    assert all(r.metrics is not None and r.diverged_at is None and r.final["total"] > 0 for r in ohem.runs)
    assert blow.diverged == [r.diverged_at for r in blow.runs] and len(blow.diverged) == 2 and blow.ap == 0.0
    record = json.loads((tmp_path / "abl" / "ohem" / "seed1" / "run.json").read_text())
    assert (record["config"]["loss_fn"] == "ohem" and record["config"]["ohem_batch"] == 16
            and record["config"]["seed"] == 1)
    assert (tmp_path / "abl" / "fl" / "seed0" / "metrics.json").is_file()
    assert ohem.runs[0].out == str(tmp_path / "abl" / "ohem" / "seed0")
    assert fl.runs[0].final != fl.runs[1].final  # another seed: other weights, data and order

    again = run_ablations(grid[:1], tiny(tmp_path / "base"), tmp_path / "abl", seeds=(0, 1), progress=False)
    assert [r.seconds for r in again[0].runs] == [r.seconds for r in fl.runs]  # read back, not retrained
    changed = run_ablations(grid[:1], tiny(tmp_path / "base", steps=2), tmp_path / "abl", seeds=(0,), progress=False)
    assert json.loads((tmp_path / "abl" / "fl" / "seed0" / "run.json").read_text())["config"]["steps"] == 2
    assert changed[0].runs[0].final != fl.runs[0].final  # a changed base config trains again

    table = format_table(results)
    assert "diverged: 2 of 2 seeds" in table and table.splitlines()[2] == "g1" and " ± " in table
    fig = plots.ablations_figure(figure_rows(results))
    ours, paper = fig.axes
    assert [t.get_text() for t in ours.get_yticklabels()] == ["fl", "ohem", "blow up"]
    assert list(ours.get_yticks()) == [2, 1, 0]  # the first run on top
    assert ours.get_xlabel() and paper.get_xlabel() and len(fig.legends) == 1
    paired = figure_rows(results, paired=True)  # rows sharing their seeds: one group, named by them
    assert {r["group"] for r in paired} == {"seeds 0, 1"} and [r["ap"] for r in paired] == [
        r["ap"] for r in figure_rows(results)]
    with pytest.raises(ValueError, match="share their seeds"):  # joined by position: other seeds would mislead
        figure_rows([results[0], dataclasses.replace(results[1], runs=results[1].runs[:1])], paired=True)


def test_runner_rejects_an_unknown_field(tmp_path):
    with pytest.raises(ValueError, match="arm 'bad': .*learning_rate"):
        run_ablations([Arm("bad", "g", dict(learning_rate=1))], tiny(tmp_path), tmp_path, progress=False)


def result(arm: Arm, aps=None, diverged_at=None) -> ArmResult:
    """A row with one run per AP value (None: every run diverged at ``diverged_at``)."""
    aps = aps if aps is not None else [None] * 3
    runs = [RunRecord({"seed": i}, None if ap is None else {"AP": ap, "AP50": ap, "AP75": ap},
                      diverged_at if ap is None else None, {}, 1.0, "nowhere") for i, ap in enumerate(aps)]
    return ArmResult(arm, runs)


def test_orderings_are_judged_against_the_seeds_noise():
    grid = {a.name: a for a in table1_grid()}
    fl, ce75, ce50, ohem, no_prior, one_anchor = (
        grid[n] for n in ("FL γ=2 α=0.25", "α-CE α=0.75", "α-CE α=0.5", "OHEM B=128 nms=0.5", "CE without prior init",
                          "anchors 1×1 (FL γ=2)"))
    good = check_orderings([result(fl, [0.30, 0.31, 0.29]), result(ce75, [0.25, 0.26, 0.24]),
                            result(ce50, [0.2, 0.21, 0.19]), result(ohem, [0.28, 0.27, 0.26]),
                            result(no_prior, diverged_at=12), result(one_anchor, [0.27, 0.28, 0.26])])
    assert [c.verdict for c in good] == [HOLDS, HOLDS, HOLDS, HOLDS]
    assert "anchors 1×1 (FL γ=2) 27.0 ± 1.0" in good[3].detail
    assert "diverged in every seed, at iteration 12, 12, 12" in good[2].detail and "30.0 ± 1.0" in good[0].detail
    bad = check_orderings([result(fl, [0.10, 0.11, 0.09]), result(ce75, [0.25, 0.26, 0.24]),
                           result(ohem, [0.10, 0.30, 0.05]), result(no_prior, [0.3, 0.3, 0.31]),
                           result(ce50, [0.2, 0.21, 0.19]), result(one_anchor, [0.2, 0.21, 0.22])])
    # FL clearly below α-CE; against a noisy OHEM the same mean is no evidence; no-prior beats α-CE .5 here;
    # one anchor per location beats nine
    assert [c.verdict for c in bad] == [FAILS, WITHIN_NOISE, FAILS, FAILS]
    assert "does NOT hold" in format_claims(bad) and "within noise" in format_claims(bad)
    one_seed = check_orderings([result(fl, [0.3]), result(ce75, [0.1])])
    assert one_seed[0].verdict == NOT_TESTED and "one seed" in one_seed[0].detail
    partial = check_orderings([result(fl, [0.3])])
    assert [c.verdict for c in partial] == [NOT_TESTED] * 4 and "not tested" in format_claims(partial)


def test_bases_share_everything_but_size():
    fast, gpu, cpu = table1_base(gpu=False, fast=True), table1_base(gpu=True), table1_base(gpu=False)
    assert fast.steps == 20 and cpu.steps == 500 and gpu.steps == 1000 and gpu.amp == "bf16"
    assert table1_base(gpu=True, fast=True) == fast  # fast mode wins, whatever the device
    for config in (fast, gpu, cpu):
        assert config.checkpoint_every == 0 and config.loss_fn == "focal" and config.prior == 0.01
    assert fast.log_every == 1  # lesson 06 draws the short run's whole curve


def test_pretrained_base_is_the_lessons_regime():
    pretrained = table1_base(gpu=False, backbone_weights="shapes")
    lesson = Config(**PRESETS["cpu-pretrained"])
    assert pretrained.backbone_weights == "shapes" and table1_base(gpu=False).backbone_weights is None
    # the grid's base is the lessons' preset, logged more often, without mid-run checkpoints, on 500
    # validation images: results/confirm's base, so that its runs are rows of this grid
    assert dataclasses.replace(pretrained, log_every=lesson.log_every, checkpoint_every=lesson.checkpoint_every,
                               val_images=lesson.val_images, out=lesson.out) == lesson
    assert dataclasses.replace(pretrained, out="x") == dataclasses.replace(confirm.lessons_base(), out="x")
    assert table1_base(gpu=True, backbone_weights="w.pt").backbone_weights == "w.pt"


def test_command_line_writes_table_json_and_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablations, "table1_base", lambda gpu, fast=False, backbone_weights=None:
                        tiny(tmp_path / "base", steps=2))
    monkeypatch.setattr(ablations, "table1_grid",
                        lambda fast=False: [ablations.FL_GAMMA_2, ablations.BEST_ALPHA_CE, ablations.NO_PRIOR])
    assert ablations.main(["--device", "cpu", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                           "--seeds", "0,1", "--rows", f"FL γ=2 α=0.25, {NO_PRIOR_NAME}"]) == 0
    assert not (tmp_path / "runs" / "α-CE_α=0.75").exists()  # --rows: only the rows asked for are trained
    printed = capsys.readouterr().out
    assert "FL γ=2 α=0.25" in printed and "not tested" in printed and "2 seeds" in printed  # no α-CE in this grid
    saved = json.loads((tmp_path / "res" / "table1.json").read_text())
    assert saved["device"] == "CPU" and [r["name"] for r in saved["rows"]] == ["FL γ=2 α=0.25", NO_PRIOR_NAME]
    assert saved["rows"][0]["paper"] == [34.0, 52.5, 36.5] and saved["base"]["device"] == "cpu"
    assert [run["config"]["seed"] for run in saved["rows"][0]["runs"]] == [0, 1] and saved["seeds"] == [0, 1]
    loaded = ablations.load_results(tmp_path / "res" / "table1.json")  # what lesson 06 reads
    assert [r.arm for r in loaded] == [ablations.FL_GAMMA_2, ablations.NO_PRIOR]
    assert [r.runs for r in loaded] == [r.runs for r in ablations.run_ablations(
        [ablations.FL_GAMMA_2, ablations.NO_PRIOR], tiny(tmp_path / "base", steps=2), tmp_path / "runs", (0, 1),
        progress=False)]  # the runs read back from their folders are the runs written
    assert format_table(loaded) in printed
    with pytest.raises(FileNotFoundError, match="python -m fl_lab.ablations --results"):
        ablations.load_results(tmp_path / "nothing.json")
    assert (tmp_path / "res" / "table1.png").stat().st_size > 1000
    assert (tmp_path / "res" / "table1.txt").read_text().startswith("$ python -m fl_lab.ablations --device cpu")


NO_PRIOR_NAME = "CE without prior init"


def test_the_claims_rows_are_chosen_on_the_grid_by_mean_ap():
    grid = {a.name: a for a in table1_grid()}
    rows = [result(grid[name], aps) for name, aps in (
        ("α-CE α=0.5", [0.30, 0.20, 0.10]), ("α-CE α=0.75", [0.21, 0.21, 0.21]),  # means .20 and .21
        ("FL γ=1 α=0.25", [0.5, 0.5, 0.5]), ("FL γ=2 α=0.25", [0.4, 0.4, 0.4]),
        ("OHEM B=128 nms=0.5", [0.3, 0.3, 0.3]), ("OHEM B=256 nms=0.7", [0.31, 0.3, 0.3]),
        ("anchors 3×1 (FL γ=2)", [0.4, 0.4, 0.4]), ("CE without prior init", [0.0, 0.0, 0.0]))]
    # FL γ=2 whatever the better γ; α-CE .75 and OHEM B=256 by their means; no 1×1 row in this grid
    assert [a.name for a in ablations.claim_rows(rows)] == [
        "FL γ=2 α=0.25", "α-CE α=0.75", "OHEM B=256 nms=0.7", "CE without prior init"]
    with pytest.raises(ValueError, match="must differ from the grid's"):
        ablations.confirm_claims(rows, Config(), "nowhere", seeds=(2, 100))


def test_command_line_confirms_the_claims_on_other_seeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablations, "table1_base", lambda gpu, fast=False, backbone_weights=None:
                        tiny(tmp_path / "base", steps=2))
    monkeypatch.setattr(ablations, "table1_grid", lambda fast=False: [
        ablations.FL_GAMMA_2, ablations.alpha_ce(0.5), ablations.BEST_ALPHA_CE, ablations.NO_PRIOR])
    monkeypatch.setattr(ablations, "CONFIRM_SEEDS", (7, 8))
    assert ablations.main(["--device", "cpu", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                           "--seeds", "0,1", "--confirm"]) == 0
    saved = json.loads((tmp_path / "res" / "table1.json").read_text())
    grid = ablations.load_results(tmp_path / "res" / "table1.json")
    best_ce = max(grid[1:3], key=lambda r: r.ap).name
    confirmed = ablations.load_results(tmp_path / "res" / "table1.json", confirmed=True)
    assert [r.name for r in confirmed] == ["FL γ=2 α=0.25", best_ce, NO_PRIOR_NAME]
    assert saved["confirm_seeds"] == [7, 8] and {r.seed for c in confirmed for r in c.runs} == {7, 8}
    assert all(Path(c.runs[0].out) == tmp_path / "runs" / slug(c.name) / "seed7" for c in confirmed)
    # the claims are the confirmed rows' (their APs), not the grid's
    assert saved["claims"] == [dataclasses.asdict(c) for c in check_orderings(confirmed)]
    printed = capsys.readouterr().out
    assert "confirmation seeds 7, 8" in printed and format_table(confirmed) in printed
    assert (tmp_path / "res" / "table1_confirmed.png").stat().st_size > 1000
    without = tmp_path / "res2"
    assert ablations.main(["--device", "cpu", "--out", str(tmp_path / "runs"), "--results", str(without),
                           "--seeds", "0,1"]) == 0  # read back, nothing trained
    assert "exploratory" in capsys.readouterr().out and not (without / "table1_confirmed.png").exists()
    with pytest.raises(ValueError, match="made without --confirm"):
        ablations.load_results(without / "table1.json", confirmed=True)


def test_command_line_says_what_is_wrong_with_seeds(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ablations.main(["--seeds", "0,one"])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ablations.main(["--confirm", "--seeds", "0,100"])  # refused before anything trains
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--seeds: the grid's seeds choose the rows --confirm judges on" in err
    with pytest.raises(SystemExit) as exit_info:
        ablations.main(["--rows", "FL γ=3"])
    assert exit_info.value.code == 2 and "--rows: unknown ['FL γ=3']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ablations.main(["--backbone-weights", "no/such/weights.pt"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--backbone-weights: no file 'no/such/weights.pt'" in err
    assert "python -m fl_lab.pretrain" in err and "Traceback" not in err


def test_command_line_turns_a_user_error_into_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        ablations.main(["--fast", "--out", str(tmp_path / "file" / "runs")])  # --out under a file
    lines = [line for line in capsys.readouterr().err.splitlines() if "ablations:" in line and "it/s" not in line]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("python -m fl_lab.ablations: error:")
    assert "Not a directory" in lines[0]


def _place_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("place_confirm_runs", ROOT / "tools" / "place_confirm_runs.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _confirmed_runs(arm_prefix: str) -> list[dict]:
    saved = json.loads((ROOT / "results" / "confirm" / "confirm.json").read_text())
    return next(a for a in saved["arms"] if a["arm"].startswith(arm_prefix))["confirmed"]["runs"]


def test_results_confirm_runs_are_read_back_as_table1_rows_on_the_lessons_backbone(tmp_path, monkeypatch):
    import fl_lab.experiment as experiment
    from fl_lab.ablations import FL_GAMMA_2, alpha_ce

    tool = _place_tool()
    rows = tool.experiment_rows("table1", tmp_path)
    placed = tool.place(*rows)
    # FL γ=2 α=.25 and α-CE α=.5 at lr 0.01 on seeds 0-2 and 100-104, α-CE .75 and .9 on seeds 0-2
    assert len(placed) == 22 and tool.place(*rows) == []  # written once
    fl = _confirmed_runs("FL")
    monkeypatch.setattr(experiment, "run", lambda *a, **k: pytest.fail("trained instead of reading back"))
    base = table1_base(gpu=False, backbone_weights="shapes")
    read = experiment.run_arm(FL_GAMMA_2, base, tmp_path, (100, 101, 102, 103, 104))
    assert [r.ap for r in read.runs] == [r["metrics"]["AP"] for r in fl]
    assert len(experiment.run_arm(alpha_ce(0.9), base, tmp_path, (0, 1, 2)).runs) == 3


def test_results_confirm_runs_are_read_back_as_lesson_07s_retinanets_but_the_timed_first_seed(tmp_path, monkeypatch):
    import fl_lab.experiment as experiment
    from fl_lab.compare import compare_base, detector_arms

    tool = _place_tool()
    placed = tool.place(*tool.experiment_rows("figure2", tmp_path))
    # FL and α-CE at 128 px on seeds 101-104; seed 100 is trained, to be timed on its weights
    assert sorted(Path(p).name for p in placed) == sorted(["seed101", "seed102", "seed103", "seed104"] * 2)
    assert not any("faster_rcnn" in p or "ssd" in p for p in placed)
    monkeypatch.setattr(experiment, "run", lambda *a, **k: pytest.fail("trained instead of reading back"))
    base = dataclasses.replace(compare_base(gpu=False, fast=False), device="cpu", evaluate=True)
    fl, ce = detector_arms(base, (96, 192))[0], detector_arms(base, (96, 192))[3]
    assert (fl.name, ce.name) == ("RetinaNet (FL)", "RetinaNet (α-CE)")
    read = experiment.run_arm(fl, base, tmp_path, (101, 102))
    assert [r.ap for r in read.runs] == [r["metrics"]["AP"] for r in _confirmed_runs("FL")[1:3]]
    assert [r.ap for r in experiment.run_arm(ce, base, tmp_path, (101, 102)).runs] == [
        r["metrics"]["AP"] for r in _confirmed_runs("α-CE")[1:3]]
