"""The one command to run when a GPU is lent: fine-tune the ``gpu`` recipe to a time budget, benchmark, report.

A lent GPU machine (one H100 or H200) brings CUDA PyTorch and torchvision but none of the
kit's other dependencies and no network, and is lent for about 15 minutes of device time in
all, start-up included. This command fits one window of ``--total`` minutes (default 8): the
training and benchmark stages are sized to the time left and stopped at their budget, and the
weights stage takes seconds on a GPU (it is not cut). It prints a line per stage:

1. **wheels** — installs the kit's missing dependencies (tqdm, pycocotools, matplotlib) from a
   local folder of wheels, if ``--wheels`` names one;
2. **weights** — the backbone the ``gpu`` preset fine-tunes, as the lessons do: torchvision's
   ImageNet ResNet-50 if the torch hub cache holds it, else a ResNet-50 pretrained on Shapes
   crops right here (:mod:`fl_lab.pretrain`'s recipe: seconds on a GPU);
3. **train** — times a few iterations of the ``gpu`` preset (Shapes at 512 px, ResNet-50-FPN,
   batch 16, bf16), sets aside the time its evaluation will take, fine-tunes it for as many
   iterations as fit the rest of ``--minutes`` (the schedule scales with them; training stops at
   that budget whatever the estimate said), then evaluates AP on its validation images;
4. **bench** — ``bench/run_all.py`` on the same device, with its full sizes if the time left
   allows, else its quick ones, else not at all; stopped at the deadline if it runs long;
5. **report** — ``<results>/gpu_check.json`` (every number) and ``<results>/summary.md`` (the GPU,
   torch version, wall time of each stage, AP, images per second, the benchmark tables).

    python -m fl_lab.gpu_check --wheels wheels --results results/gpu   # on the GPU machine
    python -m fl_lab.gpu_check --device cpu --minutes 0.1 --total 1.5 --pretrain-steps 2 --results /tmp/gpu_check

On a CPU the ``cpu-pretrained`` preset stands in for ``gpu`` (the code path, not a result).
Preparing the wheels, on a machine that reaches PyPI, for the GPU machine's Python (3.12 on
the lent H100/H200s):

    pip download --dest wheels --only-binary=:all: --python-version 3.12 \\
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 tqdm pycocotools matplotlib

Only the standard library is imported before the wheels are installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["BENCH_SECONDS", "DEPENDENCIES", "bench_mode", "main"]

DEPENDENCIES = ("tqdm", "pycocotools", "matplotlib")  # torch and torchvision come with the GPU machine
CALIBRATION_STEPS = {"cuda": 20, "cpu": 3}  # iterations timed to size the run (the first few warm up)
#: What each benchmark mode needs, in seconds, before it is started (generous: never timed on a GPU).
BENCH_SECONDS = {"full": 150.0, "quick": 30.0}
REPORT_SECONDS = 10.0  # kept back for the report stage
REPO = Path(__file__).resolve().parents[1]


class Clock:
    """Seconds since the command started, and how many are left of its ``total``."""

    def __init__(self, total_s: float):
        self.start, self.total_s = time.monotonic(), total_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()


def _stage(number: int, name: str, what: str) -> float:
    print(f"[{number}/5] {name}: {what}", flush=True)
    return time.perf_counter()


def install_wheels(folder: Optional[Path]) -> list[str]:
    """Install the dependencies this Python lacks from ``folder`` (no index, no network); return their names."""
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        if folder is None:
            raise SystemExit(f"error: this Python lacks {', '.join(missing)}: pass --wheels DIR with their wheels "
                             "(see python -m fl_lab.gpu_check --help)")
        if not folder.is_dir():
            raise SystemExit(f"error: --wheels {folder}: no such folder")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder), *missing],
                       check=True)
    return missing


def base_config(device: str, runs: Path):
    """The preset this device runs: ``gpu`` on CUDA, ``cpu-pretrained`` standing in on a CPU."""
    from .train import PRESETS, Config

    preset = "gpu" if device.startswith("cuda") else "cpu-pretrained"
    code_path = {} if device.startswith("cuda") else {"val_images": 16}  # a CPU checks the code path only
    return preset, Config(**{**PRESETS[preset], **code_path, "device": device, "checkpoint_every": 0, "log_every": 5,
                             "out": str(runs / preset)})


def backbone_weights(config, pretrain_steps: Optional[int]) -> dict:
    """The weights file ``config`` fine-tunes from (the ``gpu`` preset's ``pretrained``: ImageNet if
    the torch hub cache holds it, else Shapes crops, made now into that cache), and how it was made.
    ``pretrain_steps``: the Shapes recipe's length (default: :data:`fl_lab.pretrain.RECIPE`'s)."""
    from .pretrain import RECIPE, shapes_weights
    from .weights import cached_imagenet_weights

    imagenet = cached_imagenet_weights(config.backbone)
    if imagenet is not None:
        return {"file": str(imagenet), "source": "imagenet (torch hub cache)"}
    path = shapes_weights(config.backbone, progress=False, device=config.device,
                          steps=pretrain_steps or RECIPE["steps"])
    return {"file": str(path), "source": "shapes crops", "pretrain": json.loads(Path(f"{path}.json").read_text())}


def train_to_budget(config, seconds: float, out: Path) -> dict:
    """Time a few iterations of ``config``, then fine-tune it for as many as fit what is left of
    ``seconds`` once its evaluation is set aside (stopping at that budget in any case), then evaluate."""
    from .train import run

    begin = time.monotonic()
    cuda = config.device.startswith("cuda")
    calibration = CALIBRATION_STEPS["cuda" if cuda else "cpu"]
    probe = run(dataclasses.replace(config, steps=calibration, warmup=1, evaluate=False, log_every=1,
                                    out=str(out / "calibration")), progress=False)
    rows = probe["history"][1:] or probe["history"]
    per_step = statistics.median(config.batch_size / r["images_per_s"] for r in rows)
    # Evaluation runs forward passes only (about a third of a training step's work) over the
    # validation set, plus COCOeval: set that much aside from the budget.
    evaluation_s = per_step * config.val_images / config.batch_size / 3 + 5
    left = seconds - (time.monotonic() - begin) - evaluation_s
    steps = max(1, int(left / per_step))
    warmup = min(config.warmup, steps // 10)
    config = dataclasses.replace(config, steps=steps, warmup=warmup)
    start = time.perf_counter()
    result = run(config, progress=False, time_budget_s=max(left, 0.0))
    rates = [r["images_per_s"] for r in result["history"][1:]] or [r["images_per_s"] for r in result["history"]]
    return {"steps": steps, "steps_run": len(result["history"]), "warmup": warmup,
            "seconds_per_step_calibrated": per_step, "evaluation_s_set_aside": evaluation_s,
            "train_and_eval_s": time.perf_counter() - start, "images_per_s": statistics.median(rates),
            "metrics": result["metrics"], "config": dataclasses.asdict(config)}


def bench_mode(wanted: str, seconds_left: float) -> str:
    """The benchmark sizes that fit: ``wanted`` (full or quick), else quick, else none."""
    order = ("full", "quick") if wanted == "full" else ("quick",) if wanted == "quick" else ()
    return next((mode for mode in order if seconds_left >= BENCH_SECONDS[mode]), "none")


def run_benchmarks(device: str, mode: str, out: Path, timeout_s: float) -> tuple[Optional[str], str]:
    """``bench/run_all.py`` on ``device`` (``mode``: full or quick), stopped after ``timeout_s``;
    (its markdown report or None, what happened)."""
    script = REPO / "bench" / "run_all.py"
    if not script.is_file():
        return None, "bench/ is not here (an installed kit): skipped"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    command = [sys.executable, str(script), "--device", kind, "--no-notebooks", "--results", str(out)]
    try:
        quick = ["--quick", "--repeats", "3"]  # tiny sizes, fewer repeats: what is left when time is short
        subprocess.run(command + (quick if mode == "quick" else []), check=True, cwd=REPO, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"{mode}: stopped at its deadline after {timeout_s:.0f} s"
    report = out / f"run_all_{kind}.md"
    return (report.read_text() if report.is_file() else None), mode


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_lab.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=None, help="folder of wheels for the missing dependencies")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (the code path only)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget, calibration included (default 4)")
    parser.add_argument("--total", type=float, default=8.0, help="the whole command's budget in minutes (default 8)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="iterations of the Shapes pretraining when no ImageNet weights are cached (default: "
                             "fl_lab.pretrain's recipe)")
    parser.add_argument("--bench", choices=("full", "quick", "none"), default=None,
                        help="benchmark sizes (default: full on a GPU, quick on a CPU), cut to what time allows")
    parser.add_argument("--results", type=Path, default=Path("results/gpu"), help="folder for the JSON and summary")
    parser.add_argument("--runs", type=Path, default=Path("runs/gpu_check"), help="folder for the training runs")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60:
        parser.error(f"--minutes must be in (0, 60], got {args.minutes}")
    if not args.minutes < args.total <= 60:
        parser.error(f"--total must be more than --minutes ({args.minutes}) and at most 60, got {args.total}")
    if args.pretrain_steps is not None and args.pretrain_steps < 1:
        parser.error(f"--pretrain-steps must be at least 1, got {args.pretrain_steps}")
    clock = Clock(60 * args.total)
    walls = {}

    start = _stage(1, "wheels", f"checking {', '.join(DEPENDENCIES)}")
    installed = install_wheels(args.wheels)
    walls["wheels"] = time.perf_counter() - start

    import torch

    from .torch_utils import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        parser.error(f"{err}; --device cpu checks the code path")
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    preset, config = base_config(args.device, args.runs)

    start = _stage(2, "weights", f"the {config.backbone} that the {preset} preset fine-tunes")
    weights = backbone_weights(config, args.pretrain_steps)
    config = dataclasses.replace(config, backbone_weights=weights["file"])
    walls["weights"] = time.perf_counter() - start
    made = weights.get("pretrain")
    print(f"       {weights['source']}" + (f": {made['steps']} iterations in {made['seconds']:.0f} s, held-out "
                                           f"accuracy {made['held_out_accuracy']:.3f}" if made else ""), flush=True)

    # Training and its evaluation get their minutes, but never the time the benchmark's quick sizes
    # and the report need.
    train_s = min(60 * args.minutes, clock.left() - BENCH_SECONDS["quick"] - REPORT_SECONDS)
    if train_s <= 0:
        raise SystemExit(f"error: {clock.left():.0f} s of --total {args.total:g} min are left after the weights "
                         "stage: too little to train; raise --total")
    start = _stage(3, "train", f"the {preset} preset for {train_s / 60:.1f} min on {gpu or 'the CPU'}, with AP")
    training = train_to_budget(config, train_s, args.runs)
    training["preset"] = preset
    walls["train"] = time.perf_counter() - start
    metrics = training["metrics"]
    print(f"       {training['steps_run']} of {training['steps']} iterations, {training['images_per_s']:.1f} "
          f"images/s, AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}", flush=True)

    bench_left = clock.left() - REPORT_SECONDS
    mode = bench_mode(args.bench or ("full" if gpu else "quick"), bench_left)
    start = _stage(4, "bench", f"bench/run_all.py ({mode}, {bench_left:.0f} s left)")
    bench, bench_outcome = (None, "none: no time left") if mode == "none" else \
        run_benchmarks(args.device, mode, args.results / "bench", bench_left)
    walls["bench"] = time.perf_counter() - start
    print(f"       {bench_outcome}", flush=True)

    _stage(5, "report", f"writing {args.results}")
    walls["total"] = clock.elapsed()
    payload = {"command": "python -m fl_lab.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
               "device": gpu or platform.processor() or "CPU", "torch": torch.__version__,
               "python": platform.python_version(), "installed_wheels": installed, "wall_s": walls,
               "budget_s": clock.total_s, "weights": weights, "training": training, "bench": bench_outcome,
               "bench_report": bench, "date": time.strftime("%Y-%m-%d")}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu_check.json").write_text(json.dumps(payload, indent=2))
    lines = [f"# GPU check — {payload['device']}", "", f"`{payload['command']}` on {payload['date']}, torch "
             f"{payload['torch']}, Python {payload['python']}.", "",
             "| stage | wall time |", "|---|---|", *[f"| {k} | {v:.0f} s |" for k, v in walls.items()], "",
             f"Backbone: {weights['source']} ({weights['file']}).", "",
             f"Training: the `{preset}` preset, fine-tuned, {training['steps_run']} of {training['steps']} iterations "
             f"(warm-up {training['warmup']}), {training['images_per_s']:.1f} images/s; AP {metrics['AP']:.3f}, AP50 "
             f"{metrics['AP50']:.3f}, AP75 {metrics['AP75']:.3f} on its validation images.", "",
             f"Benchmarks: {bench_outcome}."]
    if bench:
        lines += ["", "## Benchmarks", "", bench]
    (args.results / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"       done in {walls['total']:.0f} s of {clock.total_s:.0f}: {args.results / 'summary.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
