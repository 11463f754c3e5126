"""fl_lab.confirm: every arm searched alike on exploration seeds, its choice judged on the confirmation seeds."""

import dataclasses
import json
from pathlib import Path

import pytest

from fl_lab import confirm
from fl_lab.analysis import VERDICTS
from fl_lab.experiment import Arm
from fl_lab.train import Config

TINY = dict(image_size=64, train_images=8, val_images=4, num_classes=2, backbone="resnet18", fpn_channels=16,
            head_convs=1, batch_size=2, steps=2, warmup=1, workers=0, min_object_size=16.0, log_every=1,
            checkpoint_every=0, device="cpu")
ARMS = (confirm.Search("FL", (Arm("lr 0.01", overrides=dict(loss_fn="focal", lr=0.01)),
                              Arm("lr 0.02", overrides=dict(loss_fn="focal", lr=0.02)))),
        confirm.Search("CE", (Arm("α .5", overrides=dict(loss_fn="balanced_ce", alpha=0.5)),
                              Arm("α .9", overrides=dict(loss_fn="balanced_ce", alpha=0.9)))))


def test_each_arm_runs_the_same_search_then_its_choice_on_other_seeds(tmp_path, monkeypatch):
    import fl_lab.experiment as experiment

    trained, train = [], experiment.run
    monkeypatch.setattr(experiment, "run", lambda config, **kw: trained.append(config) or train(config, **kw))
    outcomes = confirm.explore_then_confirm(Config(**TINY), ARMS, tmp_path, progress=False, explore_seeds=(0, 1),
                                            confirm_seeds=(100, 101))
    # every exploration first (each arm's candidates in turn), then the confirmations seed by seed across the arms
    assert [(Path(c.out).parts[-3], c.seed) for c in trained] == [
        ("FL", 0), ("FL", 1), ("FL", 0), ("FL", 1), ("CE", 0), ("CE", 1), ("CE", 0), ("CE", 1),
        ("FL", 100), ("CE", 100), ("FL", 101), ("CE", 101)]
    for outcome, search in zip(outcomes, ARMS, strict=True):
        assert [r.arm for r in outcome.explored] == list(search.candidates)
        assert all([run.seed for run in r.runs] == [0, 1] for r in outcome.explored)
        means = {r.name: sum(run.ap for run in r.runs) / 2 for r in outcome.explored}
        assert outcome.chosen == max(means, key=means.get)  # the best mean on the exploration seeds
        assert [r.seed for r in outcome.confirmed.runs] == [100, 101]
        chosen = next(a for a in search.candidates if a.name == outcome.chosen)
        assert all(r.config[k] == v for r in outcome.confirmed.runs for k, v in chosen.overrides.items())
        assert all(r.out.startswith(str(tmp_path / search.name / chosen.name.replace(" ", "_")))
                   for r in outcome.confirmed.runs)
    (claim,) = confirm.claims(outcomes)
    assert claim.verdict in VERDICTS and f"FL ({outcomes[0].chosen}) beats CE ({outcomes[1].chosen})" in claim.text
    with pytest.raises(ValueError, match="exploration and confirmation seeds must differ"):
        confirm.explore_then_confirm(Config(**TINY), ARMS, tmp_path, explore_seeds=(0, 1), confirm_seeds=(1, 2))


def test_the_command_line_writes_what_lessons_read_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(confirm.REGIMES, "lessons", confirm.Regime("a tiny regime", lambda: Config(**TINY), ARMS))
    monkeypatch.setattr(confirm, "EXPLORE_SEEDS", (0, 1))
    monkeypatch.setattr(confirm, "CONFIRM_SEEDS", (100, 101))
    assert confirm.main(["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "res" / "confirm.json").read_text())
    loaded = confirm.load_results(tmp_path / "res" / "confirm.json")
    assert confirm.format_outcomes(loaded) in printed
    confirmation = confirm.format_confirmation(loaded).splitlines()
    assert confirmation[0].startswith("confirmation") and len(confirmation) == 1 + len(ARMS)
    for line, outcome in zip(confirmation[1:], loaded, strict=True):
        assert line.split()[0] == outcome.arm and outcome.chosen in line
        assert line.endswith(" / ".join(f"{r.seed}: {100 * r.ap:.1f}" for r in outcome.confirmed.runs))
    assert [o.chosen for o in loaded] == [a["chosen"] for a in saved["arms"]]
    assert [c.verdict for c in confirm.claims(loaded)] == [c["verdict"] for c in saved["claims"]]
    assert (tmp_path / "res" / "confirm.png").stat().st_size > 1000
    assert saved["regime"] == "lessons" and saved["imbalance"] > 1
    assert f"{saved['imbalance']:.0f} negative anchors per positive" in printed

    # --gaps reads regimes back (here the same runs filed as a second, sparser regime) and trains nothing
    sparser = tmp_path / "sparser"
    sparser.mkdir()
    sparse = {**saved, "regime": "sparser", "imbalance": 4 * saved["imbalance"]}
    (sparser / "confirm.json").write_text(json.dumps(sparse))
    assert confirm.main(["--gaps", str(tmp_path / "res"), str(sparser), "--results", str(tmp_path / "gaps")]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    verdict = saved["claims"][0]["verdict"]
    assert lines[1].startswith("lessons") and lines[3].startswith("sparser")  # by imbalance, low to high
    assert f"{saved['imbalance']:.0f}:1   {verdict} — " in lines[1] and f"{4 * saved['imbalance']:.0f}:1" in lines[3]
    assert lines[2].split() == ["chosen:", *", ".join(f"{a['arm']} {a['chosen']}" for a in saved["arms"]).split()]
    gaps = json.loads((tmp_path / "gaps" / "gaps.json").read_text())
    assert [g["regime"] for g in gaps["regimes"]] == ["lessons", "sparser"]
    assert all(g["claim"]["verdict"] == verdict for g in gaps["regimes"])
    # the two regimes' gaps compared unpaired (other data from the same seeds); identical here, so no change
    assert lines[-1].startswith(f"{saved['arms'][0]['arm']}'s gap is larger at {4 * saved['imbalance']:.0f}:1 than at ")
    assert "within noise" in lines[-1] and "(Welch, " in lines[-1] and "difference +0.0 ± " in lines[-1]
    assert [c["verdict"] for c in gaps["changes"]] == ["within noise"]
    assert (tmp_path / "gaps" / "gaps.png").stat().st_size > 1000
    old = tmp_path / "old"
    old.mkdir()
    (old / "confirm.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "imbalance"}))
    with pytest.raises(SystemExit) as exit_info:
        confirm.main(["--gaps", str(old)])
    assert exit_info.value.code == 2 and "recorded its regime and imbalance" in capsys.readouterr().err


def test_the_many_objects_regimes_differ_only_in_the_canvas():
    large, small = confirm.REGIMES["many-objects"].base(), confirm.REGIMES["many-objects-small"].base()
    assert (large.image_size, small.image_size) == (320, 160)
    assert dataclasses.replace(small, image_size=320) == large
    assert (large.min_objects, large.max_objects, large.min_object_size, large.max_object_size) == (3, 5, 32.0, 48.0)
    lessons = confirm.lessons_base()
    assert dataclasses.replace(large, image_size=lessons.image_size, min_objects=1, max_objects=1,
                               max_object_size=None) == lessons
    assert confirm.REGIMES["many-objects"].arms == confirm.REGIMES["many-objects-small"].arms
    for search in confirm.MANY_OBJECTS_ARMS:  # the same search for both losses: α grid at lr 0.01
        assert {a.overrides["lr"] for a in search.candidates} == {0.01} and len(search.candidates) == 3


def test_the_command_line_rejects_an_unknown_regime(capsys):
    with pytest.raises(SystemExit) as exit_info:
        confirm.main(["--regime", "crowded"])
    assert exit_info.value.code == 2 and "--regime" in capsys.readouterr().err
