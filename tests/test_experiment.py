"""fl_lab.experiment: a configuration over seeds, each run kept in its folder and read back."""

import dataclasses
import json

import pytest

from fl_lab.experiment import RECORD, RunRecord, _same_run, run_once, run_seeds, seed_stats
from fl_lab.train import Config


def tiny(out, **kw) -> Config:
    return Config(**{**dict(image_size=64, train_images=8, val_images=4, num_classes=2, backbone="resnet18",
                            fpn_channels=16, head_convs=1, batch_size=2, steps=2, warmup=1, lr=0.01, workers=0,
                            min_object_size=16.0, out=str(out), checkpoint_every=0, log_every=1, device="cpu"), **kw})


def test_seeds_train_in_their_own_folders_and_are_read_back(tmp_path):
    config = tiny(tmp_path / "arm")
    runs = run_seeds(config, (0, 3), progress=False)
    assert [r.seed for r in runs] == [0, 3] and [r.out for r in runs] == [str(tmp_path / "arm" / "seed0"),
                                                                          str(tmp_path / "arm" / "seed3")]
    saved = json.loads((tmp_path / "arm" / "seed3" / RECORD).read_text())
    assert saved["config"]["seed"] == 3 and saved["diverged_at"] is None
    assert json.dumps(saved["metrics"]) == json.dumps(runs[1].metrics)  # (NaN for an empty size range != NaN)
    assert set(runs[0].final) == {"cls", "box", "total"} and runs[0].final != runs[1].final
    stats = seed_stats(runs)
    assert stats.values == (runs[0].ap, runs[1].ap)
    again = run_seeds(config, (0, 3), progress=False)
    assert [r.seconds for r in again] == [r.seconds for r in runs]  # read back: not trained again
    retrained = run_seeds(config, (0,), progress=False, rerun=True)
    assert retrained[0].seconds != runs[0].seconds and retrained[0].final == pytest.approx(runs[0].final)  # deterministic


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
    assert record.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    scratch = run_once(tiny(tmp_path / "ce", loss_fn="balanced_ce"), progress=False)
    assert scratch.loss == "balanced_ce()" and scratch.weights_sha256 is None  # α-CE at its own default α
    saved = json.loads((tmp_path / "fl" / RECORD).read_text())
    assert saved["loss"] == record.loss and saved["weights_sha256"] == record.weights_sha256
    # a record written before these fields existed still reads back
    old = {k: v for k, v in saved.items() if k not in ("model", "loss", "weights_sha256")}
    assert RunRecord(**old).model == "" and RunRecord(**old).weights_sha256 is None
