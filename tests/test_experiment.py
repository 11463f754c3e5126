"""fl_lab.experiment: a configuration over seeds, each run kept in its folder and read back."""

import dataclasses
import json

import pytest

from fl_lab.evaluate import evaluate
from fl_lab.experiment import (
    RECORD,
    Arm,
    ArmResult,
    RunRecord,
    _same_run,
    experiment_parser,
    run_arm,
    run_once,
    run_seeds,
    seed_stats,
    weights_sha256,
)
from fl_lab.train import Config, datasets, load_run


def tiny(out, **kw) -> Config:
    return Config(**{**dict(image_size=64, train_images=8, val_images=4, num_classes=2, backbone="resnet18",
                            fpn_channels=16, head_convs=1, batch_size=2, steps=2, warmup=1, lr=0.01, workers=0,
                            min_object_size=16.0, out=str(out), checkpoint_every=0, log_every=1, device="cpu"), **kw})


def test_seeds_train_in_their_own_folders_and_are_read_back(tmp_path):
    config = tiny(tmp_path / "arm", prior=None)  # scores start at 0.5: a model that detects after two steps
    runs = run_seeds(config, (0, 3), progress=False)
    assert [r.seed for r in runs] == [0, 3] and [r.out for r in runs] == [str(tmp_path / "arm" / "seed0"),
                                                                          str(tmp_path / "arm" / "seed3")]
    saved = json.loads((tmp_path / "arm" / "seed3" / RECORD).read_text())
    assert saved["config"]["seed"] == 3 and saved["diverged_at"] is None
    assert json.dumps(saved["metrics"]) == json.dumps(runs[1].metrics)  # (NaN for an empty size range != NaN)
    model, trained = load_run(runs[1].out)  # the record's AP is its saved model's, scored anew on its own data
    train_set, val_set = datasets(trained)
    assert trained.seed == 3 and json.dumps(evaluate(model, val_set, progress=False)) == json.dumps(saved["metrics"])
    assert saved["metrics"]["AP"] > 0 and evaluate(model, train_set, progress=False)["AP"] != saved["metrics"]["AP"]
    assert set(runs[0].final) == {"cls", "box", "total"} and runs[0].final != runs[1].final
    stats = seed_stats(runs)
    assert stats.values == (runs[0].ap, runs[1].ap)
    again = run_seeds(config, (0, 3), progress=False)
    assert [r.seconds for r in again] == [r.seconds for r in runs]  # read back: not trained again
    retrained = run_seeds(config, (0,), progress=False, rerun=True)
    assert (retrained[0].seconds != runs[0].seconds
            and retrained[0].final == pytest.approx(runs[0].final))  # deterministic


def test_a_diverged_run_is_recorded_and_counts_zero(tmp_path):
    record = run_once(tiny(tmp_path / "x", loss_fn="ce", prior=None, lr=1e8, warmup=0, steps=4), progress=False)
    assert record.metrics is None and record.diverged_at is not None and record.ap == 0.0
    assert json.loads((tmp_path / "x" / RECORD).read_text())["diverged_at"] == record.diverged_at


def test_a_changed_config_trains_again_and_a_new_default_field_does_not(tmp_path):
    config = tiny(tmp_path / "a")
    saved = dataclasses.asdict(config)
    assert _same_run(saved, config)
    assert not _same_run({**saved, "steps": 3}, config)
    older = {k: v for k, v in saved.items() if k != "cls_weight"}  # a run made before the field existed
    assert _same_run(older, config) and not _same_run(older, dataclasses.replace(config, cls_weight=2.0))
    assert not _same_run({**saved, "no_such_field": 1}, config)


def test_a_run_linked_into_another_experiments_folder_is_read_back_from_there(tmp_path):
    made = run_once(tiny(tmp_path / "study" / "seed0"), progress=False)
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "seed0").symlink_to(tmp_path / "study" / "seed0", target_is_directory=True)
    linked = run_once(tiny(tmp_path / "grid" / "seed0"), progress=False)
    assert linked.seconds == made.seconds and json.dumps(linked.metrics) == json.dumps(made.metrics)  # read back
    assert linked.out == str(tmp_path / "grid" / "seed0") and linked.config["out"] == linked.out
    assert _same_run(dataclasses.asdict(tiny("elsewhere")), tiny(tmp_path / "grid" / "seed0"))
    assert not _same_run(dataclasses.asdict(tiny("elsewhere", seed=1)), tiny(tmp_path / "grid" / "seed0"))


def test_bad_seeds_are_refused(tmp_path):
    for seeds in ((), (1, 1), (0.5,)):
        with pytest.raises(ValueError, match="seeds"):
            run_seeds(tiny(tmp_path), seeds, progress=False)
    assert RunRecord({"seed": 0}, None, 3, {}, 0.0, "").metric("AP50") == 0.0


def test_a_record_names_what_really_trained(tmp_path):
    import hashlib

    import torch
    import torchvision

    weights = tmp_path / "r18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    record = run_once(tiny(tmp_path / "fl", loss_fn="focal", gamma=1.0, alpha=0.5, backbone_weights=str(weights)),
                      progress=False)
    assert record.model == "RetinaNet (resnet18)" and record.loss == "focal(gamma=1.0, alpha=0.5)"
    state = torch.load(weights, weights_only=True)  # the tensors' sha256, derived here with numpy's bytes
    reference = hashlib.sha256()
    for name in sorted(state):
        reference.update(f"{name}|{state[name].dtype}|{tuple(state[name].shape)}|".encode())
        reference.update(state[name].numpy().tobytes())
    assert record.weights_sha256 == reference.hexdigest()
    # the same weights saved again make another file (torch.save's random serialization id), not another hash
    torch.save(state, tmp_path / "again.pt")
    assert (tmp_path / "again.pt").read_bytes() != weights.read_bytes()
    assert weights_sha256(tmp_path / "again.pt") == record.weights_sha256
    state["fc.bias"][0] += 1e-6
    torch.save(state, tmp_path / "other.pt")
    assert weights_sha256(tmp_path / "other.pt") != record.weights_sha256
    scratch = run_once(tiny(tmp_path / "ce", loss_fn="balanced_ce"), progress=False)
    assert scratch.loss == "balanced_ce()" and scratch.weights_sha256 is None  # α-CE at its own default α
    saved = json.loads((tmp_path / "fl" / RECORD).read_text())
    assert saved["loss"] == record.loss and saved["weights_sha256"] == record.weights_sha256
    # a record written before these fields existed still reads back
    old = {k: v for k, v in saved.items() if k not in ("model", "loss", "weights_sha256")}
    assert RunRecord(**old).model == "" and RunRecord(**old).weights_sha256 is None


def test_an_arm_is_its_fields_on_the_base_and_its_result_survives_json(tmp_path):
    arm = Arm("FL γ=2 α=.5", "(b)", dict(loss_fn="focal", alpha=0.5), paper=(32.9,), note="R50")
    config = arm.config(tiny(tmp_path), tmp_path / "grid")
    assert (config.loss_fn, config.alpha, config.steps) == ("focal", 0.5, 2)
    assert config.out == str(tmp_path / "grid" / "FL_γ=2_α=.5")  # a name made safe for a path
    assert Arm("x", folder="here").config(tiny(tmp_path), tmp_path).out == str(tmp_path / "here")
    with pytest.raises(ValueError, match="arm 'typo': .*lerning_rate"):
        Arm("typo", overrides=dict(lerning_rate=1)).config(tiny(tmp_path), tmp_path)
    result = run_arm(arm, tiny(tmp_path), tmp_path / "grid", (0, 1))
    assert [r.out for r in result.runs] == [str(tmp_path / "grid" / "FL_γ=2_α=.5" / f"seed{s}") for s in (0, 1)]
    assert result.name == arm.name and result.stats().values == (result.runs[0].ap, result.runs[1].ap)
    result.measured["ms_per_image"] = 1.5
    back = ArmResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back.arm == arm and back.measured == {"ms_per_image": 1.5}
    assert json.dumps([dataclasses.asdict(r) for r in back.runs]) == json.dumps(
        [dataclasses.asdict(r) for r in result.runs])  # (NaN for an empty size range != NaN)
    assert ArmResult(arm, [dataclasses.replace(result.runs[0], metrics=None, diverged_at=7)]).diverged == [7]


def test_every_experiment_shares_one_command_line():
    parser = experiment_parser("python -m x", "doc", "runs/x", seeds="0,1,2")
    args = parser.parse_args(["--seeds", "4,5", "--results", "res"])
    assert (args.out, args.results, args.seeds, args.debug) == ("runs/x", "res", "4,5", False)
    assert not hasattr(experiment_parser("p", "d", "o").parse_args([]), "seeds")  # --seeds only where asked


def test_records_carried_to_another_machine_continue_a_study_without_training_again(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("run_records", Path(__file__).parents[1] / "tools" / "run_records.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    made = run_seeds(tiny(tmp_path / "runs" / "arm"), (0, 1), progress=False)
    assert tool.main([str(tmp_path / "runs"), str(tmp_path / "records")]) == 0
    assert "2 finished runs copied" in capsys.readouterr().out
    kept = sorted(p.relative_to(tmp_path / "records").as_posix() for p in (tmp_path / "records").rglob("*.*"))
    assert kept == [f"arm/seed{s}/{name}" for s in (0, 1) for name in ("config.json", "log.jsonl", "metrics.json",
                                                                      RECORD)]  # all but the weights
    assert list((tmp_path / "runs").rglob("*.pt"))
    tool.copy_records(tmp_path / "records", tmp_path / "elsewhere")  # the next session's empty runs/ folder
    again = run_seeds(tiny(tmp_path / "elsewhere" / "arm"), (0, 1), progress=False)
    assert [r.seconds for r in again] == [r.seconds for r in made]  # read back, not trained again
    assert not list((tmp_path / "elsewhere").rglob("*.pt"))
    (tmp_path / "elsewhere" / "arm" / "seed1" / RECORD).write_text("{}")  # another run at the same place
    with pytest.raises(SystemExit) as exit_:
        tool.main([str(tmp_path / "records"), str(tmp_path / "elsewhere")])
    assert exit_.value.code == 2 and "holds another file" in capsys.readouterr().err
    assert (tmp_path / "elsewhere" / "arm" / "seed1" / RECORD).read_text() == "{}"  # never overwritten
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "nowhere"), str(tmp_path / "x")])
    assert "nowhere is not a folder of runs" in capsys.readouterr().err
