"""Training-step speed: fl_lab's RetinaNet against torchvision's, one optimiser step at a time.

A step is forward + loss + backward + SGD (momentum 0.9, weight decay 1e-4), the work of one
iteration of :func:`fl_lab.train.train` without the data loading. Both models get the same
architecture (ResNet, torchvision's fixed 256-channel FPN and 4-conv heads without norm, as
``bench_config`` sets them), the same seed, precision and input batch (Shapes images and
their boxes). fl_lab's side is :func:`fl_lab.train.build_model` with the training loop's
loss (``Config.loss_kwargs()``); torchvision's is its RetinaNet behind
:class:`fl_lab.torchvision_detectors.TorchvisionDetector`, computing its own matching and loss
(``head.compute_loss``) on the same tensors (its resize/normalise transform is skipped). Each library keeps its
recipe's P6: from C5 (fl_lab, the paper) or P5 (torchvision).

    python bench/train_step.py                    # CPU: ResNet-18, batch 4, 256 and 320 px
    python bench/train_step.py --device cuda      # GPU: ResNet-50, 640 px, batch 16; fp32, bf16, channels_last
    python bench/train_step.py --quick            # 128 px, batch 2: seconds

A second table times fl_lab's whole training loop (:func:`fl_lab.train.train`, 20 steps) when it
reads the losses back from the device at every step — what the loop did before it deferred
those reads to its log steps — and when it reads them once per 20 steps, as it does now.

FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products of forward and backward); MFU divides them by the step time and a peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fl_lab.data import Batch, Shapes, collate
from fl_lab.torch_utils import median_ms, sync
from fl_lab.train import PRESETS, Config, TrainSettings, build_model, sgd, train
from fl_lab.train import train_step as fl_lab_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_parser, device_from, format_table, machine, ratio, write_json
from train_vs_torchvision import bench_config, build_torchvision

#: H100 SXM dense peaks in TFLOP/s. cuDNN runs fp32 convolutions as TF32 unless that is switched
#: off (torch.backends.cudnn.allow_tf32, on by default), so TF32's peak is fp32's default.
H100_PEAK_TFLOPS = {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}
MODELS = ("fl_lab", "torchvision")


@dataclass(frozen=True)
class Case:
    """One row of the table: a model size, an input batch and a precision."""

    backbone: str
    image_size: int
    batch_size: int
    bf16: bool = False
    channels_last: bool = False

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def name(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.backbone} {self.image_size}px b{self.batch_size} {self.precision}{layout}"


def cases(device: torch.device, quick: bool) -> list[Case]:
    """The rows measured on ``device``: tiny with ``quick``; else ResNet-18 on a CPU, ResNet-50 on a GPU."""
    if quick:
        return [Case("resnet18", 128, 2)]
    if device.type == "cpu":
        return [Case("resnet18", 256, 4), Case("resnet18", 320, 4)]
    return [Case("resnet50", 640, 16), Case("resnet50", 640, 16, bf16=True),
            Case("resnet50", 640, 16, bf16=True, channels_last=True)]


@dataclass
class Contender:
    """A model in train mode, its SGD optimiser and the keyword arguments of its ``loss``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_kwargs: dict


def contenders(case: Case, device: torch.device) -> tuple[Batch, dict[str, Contender]]:
    """The shared input batch (B Shapes images on ``device``) and both models, built from one seed."""
    config = bench_config("gpu" if device.type == "cuda" else "cpu-fast", backbone=case.backbone,
                          image_size=case.image_size, batch_size=case.batch_size)
    data = Shapes(case.batch_size, image_size=case.image_size, num_classes=config.num_classes, seed=config.seed,
                  max_objects=config.max_objects, min_size=config.min_object_size)
    # Pad to 32 (C5's stride), not collate's default 128, so that 320 px stays 320 px. fl_lab's grids
    # need no more; torchvision then infers P7's stride as 320 // 3 = 106 for its anchors, which
    # changes their positions, not the work.
    batch = collate([data[i] for i in range(case.batch_size)], size_divisible=32).to(device)
    models = {"fl_lab": build_model(config, data.num_classes),
              "torchvision": build_torchvision(data.num_classes, config)}
    if case.channels_last:
        batch = dataclasses.replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
    out = {}
    for name, model in models.items():
        model = model.to(device, memory_format=torch.channels_last if case.channels_last else torch.preserve_format)
        model.train()
        out[name] = Contender(model, sgd(model, config.lr, config.momentum, config.weight_decay),
                              config.loss_kwargs() if name == "fl_lab" else {})
    return batch, out


def train_step(contender: Contender, batch: Batch, bf16: bool) -> Tensor:
    """One iteration as :func:`fl_lab.train.train` runs it (:func:`fl_lab.train.train_step`: the
    forward pass under autocast, the loss outside it); returns the total loss (a detached scalar)."""
    scaler = torch.amp.GradScaler(batch.images.device.type, enabled=False)
    _, losses = fl_lab_train_step(contender.model, batch, contender.optimizer, scaler, contender.loss_kwargs,
                                  "bf16" if bf16 else "none")
    return losses["total"].detach()


def step_flops(contender: Contender, batch: Batch, bf16: bool) -> int:
    """FLOPs of one training step (forward and backward); the step it counts is a real one."""
    with FlopCounterMode(display=False) as counter:
        train_step(contender, batch, bf16)
    return counter.get_total_flops()


def profile_step(contender: Contender, batch: Batch, bf16: bool, rows: int = 12) -> str:
    """torch.profiler's table of the operators that take longest (self time) in one training step."""
    device = batch.images.device
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        train_step(contender, batch, bf16)
        sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def peaks_and_note(device: torch.device, given: list[tuple[Optional[str], float]]) -> tuple[dict, str]:
    """Peak TFLOP/s per precision ("fp32", "bf16"; None: no MFU) and a line saying where they come from.

    Defaults: an H100 SXM's on CUDA, none on a CPU; ``given``: --peak-tflops, (precision or None for all, TFLOP/s).
    """
    tf32 = torch.backends.cudnn.allow_tf32
    peaks = {"fp32": H100_PEAK_TFLOPS["tf32" if tf32 else "fp32"], "bf16": H100_PEAK_TFLOPS["bf16"]} \
        if device.type == "cuda" else {"fp32": None, "bf16": None}
    for name, tflops in given:
        peaks.update({name: tflops} if name else dict.fromkeys(peaks, tflops))
    if not any(peaks.values()):
        return peaks, "MFU: no peak known for a CPU (pass --peak-tflops)"
    note = "MFU peaks (TFLOP/s): " + ", ".join(f"{k} {v:g}" for k, v in peaks.items() if v)
    if not given:
        note += f" (an H100 SXM's dense figures, fp32 {'as TF32' if tf32 else 'without TF32'}; " \
                "pass --peak-tflops for another card)"
    return peaks, note


def measure(case: Case, device: torch.device, repeats: int, peak_tflops: Optional[float],
            profiled: bool = False) -> dict:
    """Time both models on ``case``; one row of the payload. ``profiled``: also print a profile of each."""
    batch, both = contenders(case, device)
    flops = {name: step_flops(c, batch, case.bf16) for name, c in both.items()}  # also a first warm-up step
    for c in both.values():  # two more untimed steps each: allocator, oneDNN/cuDNN plans, anchor caches
        for _ in range(2):
            train_step(c, batch, case.bf16)
    # Interleaved, one step at a time, so that load changes on a shared machine hit both alike.
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(repeats):
        for name, c in both.items():
            times[name].append(median_ms(lambda c=c: train_step(c, batch, case.bf16), device, repeats=1, warmup=0))
    ms = {name: statistics.median(t) for name, t in times.items()}
    if profiled:
        for name, c in both.items():
            print(f"{name}, {case.name}:\n{profile_step(c, batch, case.bf16)}")
    row = {"case": case.name, **dataclasses.asdict(case), "precision": case.precision, "peak_tflops": peak_tflops}
    for name in MODELS:
        row[f"{name}_ms"] = ms[name]
        row[f"{name}_images_per_s"] = 1e3 * case.batch_size / ms[name]
        row[f"{name}_gflop"] = flops[name] / 1e9
        row[f"{name}_mfu"] = flops[name] / (ms[name] / 1e3) / (peak_tflops * 1e12) if peak_tflops else None
    row["speedup"] = ratio(ms["fl_lab"], ms["torchvision"])
    return row


def table(rows: list[dict]) -> str:
    """The printed table: one line per case, both models side by side."""
    headers = ("case", "fl_lab ms/step", "torchvision ms/step", "speed-up", "fl_lab img/s", "torchvision img/s",
               "fl_lab GFLOP/step", "torchvision GFLOP/step", "fl_lab MFU %", "torchvision MFU %")

    def percent(v: Optional[float]) -> Optional[float]:
        return None if v is None else 100 * v

    return format_table(headers, [
        (r["case"], r["fl_lab_ms"], r["torchvision_ms"], r["speedup"], r["fl_lab_images_per_s"],
         r["torchvision_images_per_s"], r["fl_lab_gflop"], r["torchvision_gflop"], percent(r["fl_lab_mfu"]),
         percent(r["torchvision_mfu"]))
        for r in rows])


LOOP_STEPS = 20


def loop_cases(device: torch.device, quick: bool) -> list[tuple[str, Config]]:
    """The training loop's rows: the lessons' model (cpu-pretrained's architecture, from scratch so
    nothing is pretrained first) and, on a GPU, the ``gpu`` preset's."""
    lessons = Config(**{**PRESETS["cpu-fast"], "workers": 0})
    if quick:
        return [("lessons' model, 64 px b2", dataclasses.replace(lessons, image_size=64, batch_size=2))]
    rows = [("lessons' model, 128 px b8", lessons)]
    if device.type == "cuda":
        rows.append(("gpu preset, 512 px b16 bf16", Config(**{**PRESETS["gpu"], "backbone_weights": None})))
    return rows


def measure_loop(name: str, config: Config, device: torch.device, repeats: int, steps: int = LOOP_STEPS) -> dict:
    """ms per step of :func:`fl_lab.train.train` reading the losses back at every step and once per ``steps``."""
    data = Shapes(config.batch_size, image_size=config.image_size, num_classes=config.num_classes, seed=0,
                  min_objects=config.min_objects, max_objects=config.max_objects, min_size=config.min_object_size)
    batch = collate([data[i] for i in range(config.batch_size)]).to(device)
    model = build_model(config, data.num_classes).to(device)
    ms = {}
    for log_every in (1, steps, 1):  # the first pass warms up
        settings = TrainSettings(steps=steps, lr=1e-4, warmup=0, amp=config.amp, loss_kwargs=config.loss_kwargs(),
                                 log_every=log_every)
        ms[log_every] = median_ms(lambda s=settings: train(model, [batch], s, device, progress=False), device,
                                  repeats=repeats, warmup=0) / steps
    return {"case": name, "every_step_ms": ms[1], "every_log_ms": ms[steps], "speedup": ratio(ms[steps], ms[1])}


def loop_table(rows: list[dict], steps: int) -> str:
    return format_table(("training loop", "read back every step ms/step", f"every {steps} steps ms/step",
                         "speed-up"),
                        [(r["case"], r["every_step_ms"], r["every_log_ms"], r["speedup"]) for r in rows])


def _peak_option(text: str) -> tuple[Optional[str], float]:
    """``989`` (every precision) or ``bf16=989`` / ``fp32=494``."""
    name, _, value = text.rpartition("=")
    if name not in ("", "fp32", "bf16"):
        raise argparse.ArgumentTypeError(f"expected TFLOPS, bf16=TFLOPS or fp32=TFLOPS, got {text!r}")
    try:
        tflops = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (math.isfinite(tflops) and tflops > 0):
        raise argparse.ArgumentTypeError(f"a peak must be positive, got {value!r}")
    return name or None, tflops


def _parser() -> argparse.ArgumentParser:
    parser = bench_parser("train_step", __doc__, "one tiny case (128 px, batch 2, ResNet-18)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's busiest operators per model and case")
    parser.add_argument("--peak-tflops", type=_peak_option, action="append", default=[], metavar="[PREC=]TFLOPS",
                        help="peak for MFU, for every precision or one (bf16=…, fp32=…); repeatable. Default on "
                             "CUDA: H100 SXM dense, bf16 989, fp32 494 (TF32; 67 with cuDNN's TF32 off); none on CPU")
    return parser


def main(argv: Optional[list[str]] = None) -> dict:
    """Measure every case, print the table and write the JSON; returns the payload ("rows", "table", …)."""
    args = _parser().parse_args(argv)
    device = device_from(args.device)
    peaks, peak_note = peaks_and_note(device, args.peak_tflops)
    print(machine(device))
    rows = [measure(case, device, args.repeats, peaks[case.precision], args.profile)
            for case in cases(device, args.quick)]
    loop_steps, loop_repeats = (5, 1) if args.quick else (LOOP_STEPS, min(args.repeats, 3))
    loop_rows = [measure_loop(name, config, device, loop_repeats, loop_steps) for name, config in
                 loop_cases(device, args.quick)]
    # The footnotes belong to the tables: run_all.py quotes "table" on its own.
    text = (f"{table(rows)}\nmedian of {args.repeats} interleaved steps; speed-up = torchvision / fl_lab time. "
            f"{peak_note}\n\n{loop_table(loop_rows, loop_steps)}\nfl_lab.train.train, {loop_steps} steps on one batch, "
            f"median of {loop_repeats} runs; speed-up = every-step time / every-{loop_steps}-steps time.")
    print(text)
    payload = {"device": str(device), "quick": args.quick, "repeats": args.repeats, "peaks_tflops": peaks,
               "table": text, "rows": rows, "loop_rows": loop_rows}
    write_json("train_step", device, payload, results=args.results)
    return payload


if __name__ == "__main__":
    main()
