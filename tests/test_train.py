"""fl_lab.train: the schedule, learning, exact resume, divergence, the CLI, and DDP on CPU."""

import dataclasses
import inspect
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_lab.data import Shapes, collate
from fl_lab.evaluate import evaluate
from fl_lab.model import RetinaNet
from fl_lab.train import (
    PRESETS,
    Config,
    Diverged,
    TrainSettings,
    build_model,
    config_from_args,
    datasets,
    load_checkpoint,
    load_run,
    lr_multiplier,
    main,
    read_log,
    run,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def test_lr_schedule():
    assert lr_multiplier(0, 900, warmup=100) == pytest.approx(1 / 3)
    assert lr_multiplier(50, 900, warmup=100) == pytest.approx(2 / 3)
    assert lr_multiplier(100, 900, warmup=100) == 1.0
    assert lr_multiplier(599, 900, warmup=100) == 1.0
    assert lr_multiplier(600, 900, warmup=100) == pytest.approx(0.1)  # 2/3 of the run (60k of 90k)
    assert lr_multiplier(800, 900, warmup=100) == pytest.approx(0.01)  # 8/9 (80k of 90k)
    assert lr_multiplier(0, 900, warmup=0) == 1.0


def tiny_model(prior=0.01):
    torch.manual_seed(0)
    return RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=2, prior=prior)


def test_training_reduces_the_loss_on_a_small_shapes_subset():
    data = Shapes(8, image_size=128, num_classes=3, max_objects=6)
    batch = collate([data[i] for i in range(8)])
    model = tiny_model()

    def loss_on_batch():
        with torch.no_grad():
            return model.loss(model(batch.images), batch.targets)

    before = loss_on_batch()
    history = train(model, [batch], TrainSettings(steps=60, lr=0.01, warmup=5), progress=False)
    after = loss_on_batch()
    assert len(history) == 60 and history[0]["lr"] == pytest.approx(0.01 / 3)
    assert set(history[0]) >= {"step", "lr", "cls", "box", "total", "num_foreground", "images_per_s"}
    assert after["total"] < 0.7 * before["total"], (before, after)
    assert after["cls"] < before["cls"] and after["box"] < before["box"]


def tiny_config(out, **kw):
    return Config(**{**dict(image_size=64, train_images=12, val_images=4, num_classes=3, backbone="resnet18",
                            fpn_channels=16, head_convs=1, batch_size=4, steps=12, warmup=3, lr=0.01, workers=0,
                            out=str(out), checkpoint_every=4, log_every=1, evaluate=False, device="cpu"), **kw})


def test_resume_continues_exactly(tmp_path):
    """12 steps straight == 6 steps, stop, resume, 6 more: same weights, optimiser and log (the lr drops at 8)."""
    straight = run(tiny_config(tmp_path / "a"), progress=False)
    assert [r["step"] for r in straight["history"]] == list(range(12))
    first = run(tiny_config(tmp_path / "b", stop_after=6), progress=False)
    assert len(first["history"]) == 6 and load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 6
    second = run(tiny_config(tmp_path / "b"), resume=True, progress=False)
    assert [r["step"] for r in second["history"]] == list(range(6, 12))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert all(torch.equal(x["momentum_buffer"], y["momentum_buffer"])
               for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True))
    drop = ("images_per_s",)
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in read_log(tmp_path / run)] for run in "ab"]
    assert rows[0] == rows[1]
    assert not list(tmp_path.glob("*/*.tmp"))  # atomic writes leave no temporary files


def test_resume_refuses_to_stop_before_its_checkpoint(tmp_path):
    """Stopping at 3 from a step-6 checkpoint would relabel step-6 weights as step 3: refused, file kept."""
    run(tiny_config(tmp_path, stop_after=6), progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"stop_after=3 is before the checkpoint's step 6"):
        run(tiny_config(tmp_path, stop_after=3), resume=True, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert len(run(tiny_config(tmp_path, stop_after=6), resume=True, progress=False)["history"]) == 0  # nothing to run


def test_divergence_stops_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, prior=None, loss_fn="ce", lr=50.0, warmup=0, steps=40, checkpoint_every=1)
    with pytest.raises(Diverged, match=r"diverged at iteration (\d+).*prior.*last good checkpoint") as err:
        run(config, progress=False)
    diverged_at = err.value.step
    assert 0 < diverged_at < 40 and f"iteration {diverged_at}" in str(err.value)
    assert len(err.value.history) in (diverged_at, diverged_at + 1)  # its update, or its forward pass, failed
    saved = load_checkpoint(tmp_path / "last.pt")  # the last good one: weights and BatchNorm statistics finite
    assert saved["step"] == diverged_at
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_train_settings_reject_bad_values():
    with pytest.raises(ValueError, match="lr must be positive, got 0.0"):
        TrainSettings(steps=1, lr=0.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        TrainSettings(steps=0)
    with pytest.raises(ValueError, match="amp must be one of none, bf16, fp16, got 'fp8'"):
        TrainSettings(steps=1, amp="fp8")
    with pytest.raises(ValueError, match="log_every must be an integer >= 1"):
        TrainSettings(steps=1, log_every=0)


class Arbitrary:
    """Not a tensor or a plain value: a weights_only load must refuse it."""


def test_checkpoints_load_weights_only(tmp_path):
    torch.save({"model": {}, "payload": Arbitrary()}, tmp_path / "x.pt")
    with pytest.raises(ValueError,
                       match="x.pt holds Python objects besides tensors"):  # the weights_only refusal, named
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_load_run_rebuilds_the_trained_model(tmp_path):
    config = tiny_config(tmp_path / "run", steps=2, image_size=128, head_norm="gn", fpn_channels=32, loss_fn="ohem",
                         ohem_batch=8)
    trained = run(config, progress=False)["model"].eval()
    model, saved = load_run(tmp_path / "run")
    assert saved == config and not model.training and model.num_classes == 3
    images = torch.rand(2, 3, 128, 128)  # two images: GroupNorm of a 1×1 P7 needs more than one value
    with torch.no_grad():
        assert torch.equal(model(images).cls_logits, trained(images).cls_logits)
    with pytest.raises(ValueError, match="config.json not found"):  # the configuration is read from config.json
        load_run(tmp_path)
    (tmp_path / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    torch.save({"model": {}, "optimizer": {}, "step": 0, "extra": {}}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="does not say its number of classes"):
        load_run(tmp_path)


def test_config_loss_kwargs_pass_their_parameters():
    from fl_lab.loss import balanced_cross_entropy, focal_loss, focal_loss_star
    from fl_lab.ohem import ohem_loss

    off = {"check_values": False}  # the training loop checks for NaN itself, without a sync per step
    kw = Config(loss_fn="focal", gamma=1.0, alpha=0.5).loss_kwargs()
    assert kw["loss_fn"].func is focal_loss and kw["loss_fn"].keywords == {"gamma": 1.0, "alpha": 0.5, **off}
    kw = Config(loss_fn="ce", alpha=0.3).loss_kwargs()["loss_fn"]
    assert kw.func is balanced_cross_entropy and kw.keywords == {"alpha": None, **off}  # plain CE ignores α
    # α left unset: each loss keeps its own default, the paper's best (focal 0.25, α-balanced CE 0.75)
    for name, fn in (("focal", focal_loss), ("balanced_ce", balanced_cross_entropy), ("focal_star", focal_loss_star)):
        kw = Config(loss_fn=name).loss_kwargs()["loss_fn"]
        assert kw.func is fn and "alpha" not in kw.keywords
    assert inspect.signature(balanced_cross_entropy).parameters["alpha"].default == 0.75
    assert Config(loss_fn="balanced_ce", alpha=0.5).loss_kwargs()["loss_fn"].keywords == {"alpha": 0.5, **off}
    assert Config(loss_fn="focal_star", alpha=0.5).loss_kwargs()["loss_fn"].keywords == {"gamma": 2.0, "alpha": 0.5,
                                                                                           **off}
    kw = Config(loss_fn="ohem", ohem_batch=256, ohem_nms=0.7, ohem_max_pos_fraction=0.25).loss_kwargs()["loss_fn"]
    assert kw.func is ohem_loss and kw.keywords == {"batch_size": 256, "nms_thresh": 0.7, "max_pos_fraction": 0.25,
                                                    **off}


def test_cli_presets_overrides_and_resume_rules(tmp_path):
    config, resume = config_from_args(["--preset", "gpu", "--steps", "7", "--alpha", "none", "--no-evaluate"])
    assert not resume and config.steps == 7 and config.alpha is None and config.evaluate is False
    assert config.image_size == PRESETS["gpu"]["image_size"] and config.amp == "bf16"
    assert config_from_args([])[0] == Config()
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(Config(steps=9))))
    (tmp_path / "last.pt").touch()  # a run folder holds its checkpoint (its contents are read when training resumes)
    config, resume = config_from_args(["--resume", str(tmp_path), "--stop-after", "4"])
    assert resume and config.steps == 9 and config.stop_after == 4 and config.out == str(tmp_path)
    with pytest.raises(ValueError, match="drop --lr"):
        config_from_args(["--resume", str(tmp_path), "--lr", "0.1"])
    help_text = subprocess.run([sys.executable, "-m", "fl_lab.train", "--help"], capture_output=True, text=True,
                               check=True).stdout
    for option in ("--preset", "--resume", "--gamma", "--amp", "--stop-after", "cpu-fast"):
        assert option in help_text


def test_cli_says_when_a_gpu_preset_would_train_on_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for preset in ("gpu", "coco"):
        config_from_args(["--preset", preset])
        assert f"the {preset} preset is sized for a GPU" in capsys.readouterr().err
    for argv in (["--preset", "cpu-fast"], ["--preset", "cpu-pretrained"], ["--preset", "gpu", "--device", "cpu"], []):
        config_from_args(argv)  # a CPU preset, or a CPU asked for explicitly: nothing to say
        assert capsys.readouterr().err == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config_from_args(["--preset", "gpu"])
    assert capsys.readouterr().err == ""


def test_cli_trains_on_coco_and_voc_folders(tmp_path):
    """The README's real-data commands on tiny folders written here: ``--preset coco`` reads
    train2017/, val2017/ and annotations/ under --data-root; ``--dataset voc`` reads VOCdevkit/."""
    from test_voc import make_voc
    from torchvision.io import write_png

    coco = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        (coco / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(1, 4):
            write_png(torch.full((3, 40, 56), 40 * i, dtype=torch.uint8), str(coco / split / f"{i}.png"))
            images.append({"id": i, "file_name": f"{i}.png", "width": 56, "height": 40})
            annotations.append({"id": i, "image_id": i, "category_id": 7 + i % 2, "bbox": [4 * i, 5, 20, 16]})
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations,
             "categories": [{"id": 7, "name": "seven"}, {"id": 8, "name": "eight"}]}))
    voc = make_voc(tmp_path / "voc").parents[1]
    (voc / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n")
    small = ["--image-size", "64", "--max-size", "96", "--backbone", "resnet18", "--fpn-channels", "16",
             "--head-convs", "1", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--workers", "0",
             "--amp", "none", "--device", "cpu", "--prior", "none"]
    # the coco preset fine-tunes ImageNet weights (a download): offline, the test starts from scratch
    for argv, num_classes, val_images in (
            (["--preset", "coco", "--backbone-weights", "none", "--data-root", str(coco)], 2, 3),
            (["--dataset", "voc", "--data-root", str(voc)], 20, 1)):
        out = tmp_path / f"run_{argv[1]}"
        assert main(argv + small + ["--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        # a model this small finds nothing in these few images after two steps: AP 0 on every set
        assert_scored_from_its_checkpoint(out, metrics, detects=False)
        model, config = load_run(out)
        assert model.num_classes == num_classes and config.data_root == str(argv[-1])
        assert len(datasets(config)[1]) == val_images  # scored on the folder's validation split


def test_cli_runs_and_evaluates(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "fl_lab.train", "--image-size", "64", "--train-images", "8",
                             "--val-images", "2", "--backbone", "resnet18", "--fpn-channels", "16", "--head-convs", "1",
                             "--batch-size", "4", "--steps", "2", "--workers", "0", "--out", str(out),
                             "--device", "cpu", "--prior", "none"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "AP50" in result.stdout and json.loads((out / "config.json").read_text())["steps"] == 2
    assert_scored_from_its_checkpoint(out, metrics)


def assert_scored_from_its_checkpoint(out: Path, metrics: dict, detects: bool = True) -> None:
    """The AP a run wrote is the AP of the model its checkpoint holds, on its validation set, scored anew.

    ``detects``: the run started from ``--prior none`` (every score 0.5), so that after two steps
    the model still detects on Shapes: its AP is above 0 and differs from its AP on the training
    set, which makes the check able to tell the sets, and the checkpoint, apart.
    """
    model, config = load_run(out)
    train_set, val_set = datasets(config)
    assert json.dumps(evaluate(model, val_set, progress=False)) == json.dumps(metrics)  # (nan where no object)
    if detects:
        assert metrics["AP"] > 0 and evaluate(model, train_set, progress=False)["AP"] != metrics["AP"]


def test_ddp_on_cpu_keeps_replicas_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", "-m", "fl_lab.train", "--image-size", "64", "--train-images", "8",
         "--val-images", "2", "--backbone", "resnet18", "--fpn-channels", "16", "--head-convs", "1",
         "--batch-size", "4", "--steps", "3", "--workers", "0", "--out", str(out), "--device", "cpu",
         "--log-every", "1", "--no-evaluate"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_log(out)
    assert rows[-1] == {"replicas": 2, "replicas_identical": True}
    assert [r["step"] for r in rows[:-1]] == [0, 1, 2]


def test_log_keeps_only_rows_before_the_resumed_step(tmp_path):
    from fl_lab.train.loop import _open_log

    lines = [json.dumps({"step": i, "total": 1.0}) for i in range(6)] + [json.dumps({"replicas_identical": True})]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    _open_log(tmp_path, 3).close()
    assert [r["step"] for r in read_log(tmp_path)] == [0, 1, 2]
    _open_log(tmp_path, 0).close()  # a fresh run into the same folder starts a fresh log
    assert read_log(tmp_path) == []


def test_a_half_written_log_line_neither_blocks_resume_nor_reading(tmp_path):
    """A run killed while writing log.jsonl leaves a torn last line; last.pt is fine, so both must go on."""
    from fl_lab.train.loop import _open_log

    rows = [json.dumps({"step": i, "total": 1.0}) for i in range(4)]
    (tmp_path / "log.jsonl").write_text("\n".join(rows) + '\n{"step": 4, "tot')
    assert [r["step"] for r in read_log(tmp_path)] == [0, 1, 2, 3]
    _open_log(tmp_path, 3).close()
    assert [r["step"] for r in read_log(tmp_path)] == [0, 1, 2]
    (tmp_path / "log.jsonl").write_text(rows[0] + "\n{oops\n" + rows[1] + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl: line 2 is not JSON"):
        read_log(tmp_path)


def test_cli_takes_the_sparsity_and_loss_scale_options():
    config, _ = config_from_args(["--preset", "cpu-fast", "--empty-fraction", "0.5", "--min-objects", "0",
                                  "--max-objects", "3", "--cls-weight", "4"])
    assert (config.empty_fraction, config.min_objects, config.max_objects, config.cls_weight) == (0.5, 0, 3, 4.0)
    assert config.loss_kwargs()["cls_weight"] == 4.0
    train_set, val_set = datasets(dataclasses.replace(config, train_images=4, val_images=2))
    assert train_set.empty_fraction == 0.5 and (train_set.min_objects, train_set.max_objects) == (0, 3)
    for preset in ("cpu-pretrained", "cpu-fast"):  # the lesson regime and its from-scratch twin: one object per
        lesson = Config(**PRESETS[preset])         # image, every one matchable
        assert (lesson.min_objects, lesson.max_objects, lesson.min_object_size, lesson.normalize) == (1, 1, 32.0, "ema")


def test_anchor_density_is_configurable_for_table_1c():
    from fl_lab.train.runner import anchor_generator

    default = anchor_generator(Config())
    assert (default.scales == pytest.approx((1.0, 2 ** (1 / 3), 2 ** (2 / 3)))
            and default.aspect_ratios == (0.5, 1.0, 2.0))
    sparse = build_model(Config(anchor_scales=2, anchor_ratios=1, backbone="resnet18", fpn_channels=32,
                                head_convs=1), 3)
    assert (sparse.anchor_generator.scales == pytest.approx((1.0, 2 ** 0.5))
            and sparse.anchor_generator.aspect_ratios == (1.0,))
    out = sparse(torch.zeros(1, 3, 128, 128))
    assert out.cls_logits.shape[1] == out.anchors.shape[0] == 2 * (16 ** 2 + 8 ** 2 + 4 ** 2 + 2 ** 2 + 1)  # P3-P7
    with pytest.raises(SystemExit):
        config_from_args(["--anchor-ratios", "2"])
    with pytest.raises(ValueError, match="--anchor-scales must be an integer >= 1, got 0"):
        anchor_generator(Config(anchor_scales=0))


def test_shapes_objects_keep_to_the_configured_sizes():
    config = Config(image_size=256, train_images=2, val_images=3, min_objects=3, max_objects=5, min_object_size=32.0,
                    max_object_size=48.0)
    for dataset in datasets(config):
        assert (dataset.min_size, dataset.max_size, dataset.max_objects) == (32.0, 48.0, 5)
    assert datasets(dataclasses.replace(config, max_object_size=None))[1].max_size == 0.75 * 256  # none: ¾ image


def test_lesson_config_is_the_preset_or_in_fast_mode_the_cpu_preset_cut_short(monkeypatch):
    from fl_lab.train import lesson_config
    from fl_lab.train.config import FAST_LESSON

    monkeypatch.setenv("FL_LAB_FAST", "0")
    assert lesson_config("gpu", out="x") == Config(**{**PRESETS["gpu"], "out": "x"})
    monkeypatch.setenv("FL_LAB_FAST", "1")
    fast = lesson_config("gpu", out="x")
    assert fast == Config(**{**PRESETS["cpu-pretrained"], "out": "x", **FAST_LESSON})
    assert fast.steps < PRESETS["cpu-pretrained"]["steps"]
    with pytest.raises(ValueError, match="unknown preset 'cpu'"):
        lesson_config("cpu")


def test_input_size_resizes_the_same_shapes_images_and_their_boxes():
    from fl_lab.train import datasets

    made = Config(image_size=128, train_images=3, val_images=3, min_objects=2, max_objects=3, seed=4)
    resized = dataclasses.replace(made, input_size=96)
    for plain, scaled in zip(datasets(made), datasets(resized), strict=True):
        for i in range(len(plain)):
            (_, target), (small, small_target) = plain[i], scaled[i]
            assert tuple(small.shape) == (3, 96, 96) and small_target["scale"] == (0.75, 0.75)
            torch.testing.assert_close(small_target["boxes"], target["boxes"] * 0.75)  # the same objects
            assert torch.equal(small_target["labels"], target["labels"])
    # the ground truth stays in the images' own pixels, where predict maps detections back
    assert datasets(resized)[1].coco_ground_truth() == datasets(made)[1].coco_ground_truth()
    with pytest.raises(ValueError, match="--input-size must be an integer >= 32"):
        dataclasses.replace(made, input_size=16).check()
