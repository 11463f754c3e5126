"""The training command line: one ``error:`` line for every user error, and a resume that survives a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fl_lab.train import Config, load_checkpoint, main, read_log
from fl_lab.train.loop import TrainSettings, train

TINY = ["--image-size", "64", "--train-images", "16", "--val-images", "4", "--num-classes", "2", "--fpn-channels", "32",
        "--head-convs", "1", "--batch-size", "2", "--workers", "0", "--min-object-size", "16", "--device", "cpu",
        "--lr", "0.01", "--warmup", "2", "--log-every", "1"]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--steps", "-5"], "--steps must be an integer >= 1, got -5"),
    (["--val-images", "0"], "--val-images must be an integer >= 1"),
    (["--warmup", "-10"], "--warmup must be an integer >= 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be an integer >= 0"),
    (["--workers", "-1"], "--workers must be an integer >= 0"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--alpha", "1.5"], "--alpha must be none or in [0, 1]"),
    (["--empty-fraction", "2"], "--empty-fraction must be in [0, 1]"),
    (["--num-classes", "10"], "--num-classes must be at most 9"),
    (["--min-objects", "3", "--max-objects", "2"], "--max-objects must be at least --min-objects"),
    (["--max-object-size", "16"], "--max-object-size must be none or at least --min-object-size (32.0), got 16.0"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
])
def test_a_bad_value_is_one_error_line_naming_the_option(args, message, capsys, tmp_path):
    code, err = run_cli(args + ["--out", str(tmp_path / "run")], capsys)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("python -m fl_lab.train: error:") and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_val_images_may_be_zero_without_evaluation():
    Config(val_images=0, evaluate=False).check()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so(capsys, tmp_path):
    code, err = run_cli(["--device", "cuda", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "no CUDA device here; use --device cpu" in err


def test_argparse_errors_and_debug(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--lr", "abc"])
    assert exit_info.value.code == 2 and "argument --lr: invalid float value" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--steps"):  # --debug: the traceback, for a bug report
        main(["--steps", "0", "--debug"])


def finished_run(tmp_path, name="run", steps=4) -> Path:
    out = tmp_path / name
    assert main(TINY + ["--steps", str(steps), "--checkpoint-every", "2", "--out", str(out), "--no-evaluate"]) == 0
    return out


@pytest.mark.parametrize("damage,message", [
    ("no folder", "no such run folder; start a fresh run with --out"),
    ("no config", "config.json not found"),
    ("config not JSON", "config.json is not valid JSON"),
    ("config a list", "holds no configuration"),
    ("unknown setting", "settings this fl_lab does not know, ['learning_rate']"),
    ("no checkpoint", "last.pt not found: the run saved no checkpoint yet"),
    ("empty checkpoint", "last.pt is empty"),
    ("truncated checkpoint", "last.pt is damaged or not a checkpoint"),
    ("a pickled object", "holds Python objects besides tensors"),
    ("not a checkpoint", "is not a checkpoint of fl_lab.train"),
])
def test_every_unusable_resume_folder_names_the_file_and_the_remedy(damage, message, capsys, tmp_path):
    out = finished_run(tmp_path)
    capsys.readouterr()
    config, checkpoint = out / "config.json", out / "last.pt"
    if damage == "no folder":
        out = tmp_path / "elsewhere"
    elif damage == "no config":
        config.unlink()
    elif damage == "config not JSON":
        config.write_text('{"steps": 4,')
    elif damage == "config a list":
        config.write_text("[1, 2]")
    elif damage == "unknown setting":
        config.write_text(json.dumps({**json.loads(config.read_text()), "learning_rate": 1}))
    elif damage == "no checkpoint":
        checkpoint.unlink()
    elif damage == "empty checkpoint":
        checkpoint.write_bytes(b"")
    elif damage == "truncated checkpoint":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif damage == "a pickled object":
        torch.save({"model": {}, "optimizer": {}, "step": 2, "payload": Path("x")}, checkpoint)
    elif damage == "not a checkpoint":
        torch.save({"weights": torch.zeros(2)}, checkpoint)
    code, err = run_cli(["--resume", str(out)], capsys)
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "weights_only=False" not in err and "Traceback" not in err
    if damage in ("truncated checkpoint", "empty checkpoint", "a pickled object"):
        assert "restore" in err and "start the run again" in err


def test_resume_refuses_changed_settings(capsys, tmp_path):
    out = finished_run(tmp_path)
    code, err = run_cli(["--resume", str(out), "--lr", "0.1"], capsys)
    assert code == 2 and "drop --lr (only --stop-after may change)" in err


def _same_state(a: dict, b: dict) -> bool:
    """Equal nested dicts/lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same_state(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _rows(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in read_log(out)]  # timings differ


def test_a_run_killed_with_sigkill_resumes_bit_identical(tmp_path):
    """A real training process is killed (SIGKILL: no clean-up) after a checkpoint; --resume must end
    exactly where an uninterrupted run ends: weights, optimizer, log and metrics."""
    args = TINY + ["--steps", "12", "--checkpoint-every", "3", "--val-images", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "fl_lab.train", *args]
    straight = tmp_path / "straight"
    subprocess.run(command + ["--out", str(straight)], env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:  # wait for a checkpoint, then past it
        rows = read_log(killed) if (killed / "log.jsonl").is_file() else []
        if (killed / "last.pt").is_file() and rows and rows[-1]["step"] >= 4:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = load_checkpoint(killed / "last.pt")["step"]
    assert 3 <= step < 12 and not (killed / "metrics.json").exists()

    subprocess.run([sys.executable, "-m", "fl_lab.train", "--resume", str(killed)], env=env, check=True,
                   capture_output=True, timeout=600)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 12
    for key in ("model", "optimizer", "scheduler", "rng"):
        assert _same_state(a[key], b[key]), key
    assert _rows(straight) == _rows(killed)
    assert (straight / "metrics.json").read_text() == (killed / "metrics.json").read_text()


class NoisyImages(torch.utils.data.Dataset):
    """Random images drawn from the global RNG when indexed: a user's random transform."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(3, 64, 64), {"boxes": torch.tensor([[8.0, 8.0, 48.0, 48.0]]), "labels": torch.tensor([0])}


def test_resume_continues_a_random_transform_exactly(tmp_path):
    """The checkpoint's RNG state is restored after the DataLoader draws its base seed: a transform that
    draws random numbers in the main process sees the same numbers after a resume."""
    from fl_lab.data import collate
    from fl_lab.data.sampler import FlipByKey, TrainSampler
    from fl_lab.model import RetinaNet

    def model():
        torch.manual_seed(0)
        return RetinaNet(1, backbone="resnet18", fpn_channels=32, head_convs=1)

    def loader(start_step=0):  # the kit's endless batches: one DataLoader iterator for the whole run
        return torch.utils.data.DataLoader(FlipByKey(NoisyImages()), batch_sampler=TrainSampler(8, 2, 0, start_step),
                                           collate_fn=collate)

    torch.manual_seed(1)
    settings = TrainSettings(steps=6, warmup=1, log_every=1)
    full = train(model(), loader(), settings, "cpu", progress=False, out=tmp_path / "a")
    torch.manual_seed(1)
    train(model(), loader(), dataclasses.replace(settings, stop_after=3), "cpu", progress=False, out=tmp_path / "b")
    torch.manual_seed(123)  # a fresh process: another global RNG state before resuming
    rest = train(model(), loader(start_step=3), settings, "cpu", progress=False, out=tmp_path / "b",
                 resume_from=load_checkpoint(tmp_path / "b" / "last.pt"))
    assert [r["total"] for r in rest] == [r["total"] for r in full[3:]]


def test_a_saved_configuration_has_one_reader(tmp_path):
    from fl_lab.train import read_config

    (tmp_path / "config.json").write_text(json.dumps({"steps": 7, "lr": 0.5}))
    config = read_config(tmp_path)  # a field the kit gained since: its default
    assert (config.steps, config.lr, config.normalize) == (7, 0.5, Config().normalize)
    (tmp_path / "config.json").write_text(json.dumps({"steps": 7, "learning_rate": 0.5}))
    with pytest.raises(ValueError, match=r"config.json has settings this fl_lab does not know, \['learning_rate'\]"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds no configuration"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_config(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        read_config(tmp_path / "nowhere")
