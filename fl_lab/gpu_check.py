"""The one command to run when a GPU is lent: train the ``gpu`` recipe to a time budget, benchmark, report.

A lent GPU machine (one H100 or H200) brings CUDA PyTorch and torchvision but none of the
kit's other dependencies and no network, and is lent for about 15 minutes of device time in
all. This command fits one such window — about 8 minutes wall with the defaults — and
prints a line per stage:

1. **wheels** — installs the kit's missing dependencies (tqdm, pycocotools, matplotlib) from a
   local folder of wheels, if ``--wheels`` names one;
2. **train** — times a few iterations of the ``gpu`` preset (Shapes at 512 px, ResNet-50-FPN,
   batch 16, bf16), then trains it from scratch for as many iterations as fit ``--minutes``
   (the schedule's steps down scale with it) and evaluates AP on its validation images;
3. **bench** — ``bench/run_all.py`` on the same device: focal loss, assignment, training step
   (with MFU), inference against torchvision (``--bench quick`` for tiny sizes, ``none`` to skip);
4. **report** — ``<results>/gpu_check.json`` (every number) and ``<results>/summary.md`` (the GPU,
   torch version, wall time of each stage, AP, images per second, the benchmark tables).

    python -m fl_lab.gpu_check --wheels wheels --minutes 4 --results results/gpu   # on the GPU machine
    python -m fl_lab.gpu_check --device cpu --minutes 0.2 --results /tmp/gpu_check  # the code path, on a CPU

On a CPU the ``cpu-fast`` preset stands in for ``gpu``. Preparing the wheels, on a machine that
reaches PyPI, for the GPU machine's Python (3.12 on the lent H100/H200s):

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

__all__ = ["DEPENDENCIES", "main"]

DEPENDENCIES = ("tqdm", "pycocotools", "matplotlib")  # torch and torchvision come with the GPU machine
CALIBRATION_STEPS = {"cuda": 20, "cpu": 3}  # iterations timed to size the run (the first few warm up)
REPO = Path(__file__).resolve().parents[1]


def _stage(number: int, name: str, what: str) -> float:
    print(f"[{number}/4] {name}: {what}", flush=True)
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


def train_to_budget(device: str, minutes: float, out: Path) -> dict:
    """Time a few iterations of the preset, then train it from scratch for as many as fit ``minutes``; evaluate."""
    from .train import PRESETS, Config, run

    preset = "gpu" if device.startswith("cuda") else "cpu-fast"
    base = Config(**{**PRESETS[preset], "device": device, "checkpoint_every": 0, "log_every": 1})
    calibration = CALIBRATION_STEPS["cuda" if device.startswith("cuda") else "cpu"]
    probe = run(dataclasses.replace(base, steps=calibration, warmup=1, evaluate=False, out=str(out / "calibration")),
                progress=False)
    per_step = statistics.median(1 / r["images_per_s"] * base.batch_size for r in probe["history"][1:] or probe["history"])
    steps = max(calibration, int(60 * minutes / per_step))
    warmup = min(base.warmup, steps // 10)
    config = dataclasses.replace(base, steps=steps, warmup=warmup, out=str(out / preset))
    start = time.perf_counter()
    result = run(config, progress=False)
    seconds = time.perf_counter() - start
    rates = [r["images_per_s"] for r in result["history"][1:]] or [r["images_per_s"] for r in result["history"]]
    return {"preset": preset, "steps": steps, "warmup": warmup, "seconds_per_step_calibrated": per_step,
            "train_and_eval_s": seconds, "images_per_s": statistics.median(rates), "metrics": result["metrics"],
            "config": dataclasses.asdict(config)}


def run_benchmarks(device: str, mode: str, out: Path) -> Optional[str]:
    """``bench/run_all.py`` on ``device`` (``mode``: full or quick); its markdown report, or None if bench/ is absent."""
    script = REPO / "bench" / "run_all.py"
    if not script.is_file():
        print("       bench/ is not here (an installed kit): skipped", flush=True)
        return None
    command = [sys.executable, str(script), "--device", "cuda" if device.startswith("cuda") else "cpu", "--no-notebooks",
               "--results", str(out)] + (["--quick"] if mode == "quick" else [])
    subprocess.run(command, check=True, cwd=REPO)
    report = out / f"run_all_{'cuda' if device.startswith('cuda') else 'cpu'}.md"
    return report.read_text() if report.is_file() else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_lab.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=None, help="folder of wheels for the missing dependencies")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (the code path only)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget, calibration included (default 4)")
    parser.add_argument("--bench", choices=("full", "quick", "none"), default=None,
                        help="benchmark sizes (default: full on a GPU, quick on a CPU)")
    parser.add_argument("--results", type=Path, default=Path("results/gpu"), help="folder for the JSON and summary")
    parser.add_argument("--runs", type=Path, default=Path("runs/gpu_check"), help="folder for the training runs")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60:
        parser.error(f"--minutes must be in (0, 60], got {args.minutes}")
    begin = time.perf_counter()
    walls = {}

    start = _stage(1, "wheels", f"checking {', '.join(DEPENDENCIES)}")
    installed = install_wheels(args.wheels)
    walls["wheels"] = time.perf_counter() - start

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu to check the code path")
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    start = _stage(2, "train", f"the {'gpu' if gpu else 'cpu-fast'} preset for {args.minutes:g} min on "
                               f"{gpu or 'the CPU'}, then AP")
    training = train_to_budget(args.device, args.minutes, args.runs)
    walls["train"] = time.perf_counter() - start
    metrics = training["metrics"]
    print(f"       {training['steps']} iterations, {training['images_per_s']:.1f} images/s, AP {metrics['AP']:.3f}, "
          f"AP50 {metrics['AP50']:.3f}", flush=True)

    mode = args.bench or ("full" if gpu else "quick")
    start = _stage(3, "bench", "skipped" if mode == "none" else f"bench/run_all.py ({mode})")
    bench = None if mode == "none" else run_benchmarks(args.device, mode, args.results / "bench")
    walls["bench"] = time.perf_counter() - start

    _stage(4, "report", f"writing {args.results}")
    walls["total"] = time.perf_counter() - begin
    payload = {"command": "python -m fl_lab.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
               "device": gpu or platform.processor() or "CPU", "torch": torch.__version__,
               "python": platform.python_version(), "installed_wheels": installed, "wall_s": walls,
               "training": training, "bench_report": bench, "date": time.strftime("%Y-%m-%d")}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu_check.json").write_text(json.dumps(payload, indent=2))
    lines = [f"# GPU check — {payload['device']}", "", f"`{payload['command']}` on {payload['date']}, torch "
             f"{payload['torch']}, Python {payload['python']}.", "",
             "| stage | wall time |", "|---|---|", *[f"| {k} | {v:.0f} s |" for k, v in walls.items()], "",
             f"Training: the `{training['preset']}` preset for {training['steps']} iterations (warm-up "
             f"{training['warmup']}), {training['images_per_s']:.1f} images/s; AP {metrics['AP']:.3f}, AP50 "
             f"{metrics['AP50']:.3f}, AP75 {metrics['AP75']:.3f} on its validation images."]
    if bench:
        lines += ["", "## Benchmarks", "", bench]
    (args.results / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"       done in {walls['total']:.0f} s: {args.results / 'summary.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
