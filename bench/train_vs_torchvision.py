"""fl_lab's RetinaNet against torchvision's, trained and evaluated side by side.

The same data, backbone, image size, schedule and seed go through fl_lab's model and
through ``torchvision.models.detection.RetinaNet``: both are trained by the same loop,
:func:`fl_lab.train.train` (same SGD, warm-up and steps, the same batches and flips from
:class:`~fl_lab.data.sampler.TrainSampler`), and evaluated by :func:`fl_lab.evaluate.evaluate`
on the same validation set. It prints AP, AP50, AP75 and training images/s of both, and
fl_lab / torchvision ratios. fl_lab should be as accurate (within noise) and not slower.

    python bench/train_vs_torchvision.py --preset cpu-fast --steps 100   # ~5 min on 2 CPU cores
    python bench/train_vs_torchvision.py --preset cpu-fast               # 500 steps
    python bench/train_vs_torchvision.py --preset gpu --json results/bench_gpu.json   # one H100, bf16

What stays each model's own recipe: fl_lab — P6 from C5 (the paper), its anchors, loss
normalised by the batch's foreground count, top-k before the score threshold;
torchvision — P6 from P5, integer-rounded anchors, loss normalised per image, threshold
before top-k. Both: ResNet trained from scratch with BatchNorm, FPN with 256 channels and
4-conv heads without normalisation (torchvision fixes these, so the preset's ``fpn_channels``,
``head_convs`` and ``head_norm`` are overridden) and at most lr 0.01 × batch / 16, prior 0.01, focal
loss (γ 2, α 0.25), L1 box loss, the 0.5 / 0.4 matcher with low-quality matches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from fl_lab.data import collate
from fl_lab.data.sampler import FlipByKey, TrainSampler
from fl_lab.evaluate import evaluate
from fl_lab.torch_utils import resolve_device
from fl_lab.torchvision_detectors import TorchvisionDetector, build_torchvision_detector
from fl_lab.train import PRESETS, Config, build_model, datasets, train

__all__ = ["bench_config", "build_torchvision", "compare", "format_table", "main"]

# torchvision's _resnet_fpn_extractor has 256 FPN channels and RetinaNetHead 4 convs, fixed.
TORCHVISION_FPN_CHANNELS = 256
TORCHVISION_HEAD_CONVS = 4
#: Steps at the start of a training run left out of images/s (worker start-up, allocator warm-up).
WARMUP_STEPS = 3


# ------------------------------------------------------------------------------ the comparison
def build_torchvision(num_classes: int, config: Config) -> TorchvisionDetector:
    """torchvision's RetinaNet (P6 from P5, its anchors) over ``config``'s from-scratch ResNet, seeded like
    fl_lab's, behind fl_lab's interface (:class:`fl_lab.torchvision_detectors.TorchvisionDetector`).

    ``num_classes`` = K: fl_lab's labels 0..K-1 index torchvision's sigmoid columns directly.
    """
    torch.manual_seed(config.seed)
    return TorchvisionDetector(build_torchvision_detector("retinanet", num_classes, config.image_size, config.backbone,
                                                          TORCHVISION_FPN_CHANNELS))


def bench_config(preset: str = "cpu-fast", **overrides) -> Config:
    """The preset with ``overrides`` (None values skipped), and torchvision's fixed heads: FPN width, depth, no norm."""
    given = {k: v for k, v in overrides.items() if v is not None}
    config = Config(**{**PRESETS[preset], **given})
    # Without GroupNorm in the heads: the paper's lr 0.01 at batch 16, scaled linearly with the batch
    # (cpu-fast's 0.02 assumes GN heads, which keep a larger rate stable; bench/README.md has the runs).
    lr = min(config.lr, 0.01 * config.batch_size / 16)
    return dataclasses.replace(config, fpn_channels=TORCHVISION_FPN_CHANNELS, head_convs=TORCHVISION_HEAD_CONVS,
                               head_norm=None, lr=lr, evaluate=True, stop_after=None)


def _train_and_evaluate(name: str, model: nn.Module, loss_kwargs: Optional[dict], train_set, val_set, config: Config,
                        device: torch.device, progress: bool) -> dict:
    """One row of the table: train ``model`` as configured, then evaluate it."""
    loader = DataLoader(FlipByKey(train_set),
                        batch_sampler=TrainSampler(len(train_set), config.batch_size, config.seed),
                        collate_fn=collate, num_workers=config.workers, pin_memory=device.type == "cuda",
                        persistent_workers=config.workers > 0)
    settings = dataclasses.replace(config.train_settings(), loss_kwargs=loss_kwargs or {})
    history = train(model, loader, settings, device, progress=progress)
    del loader  # stops its workers before the other model trains
    # Steady-state throughput: images over the summed step times, start-up steps left out.
    timed = history[min(WARMUP_STEPS, len(history) // 2):]
    images_per_s = len(timed) / sum(1.0 / row["images_per_s"] for row in timed)
    tick = time.perf_counter()
    metrics = evaluate(model, val_set, batch_size=config.batch_size, device=device, num_workers=config.workers,
                       progress=progress)
    eval_s = time.perf_counter() - tick
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "AP": metrics["AP"],
            "AP50": metrics["AP50"], "AP75": metrics["AP75"], "train_images_per_s": images_per_s,
            "eval_s": eval_s, "final_loss": history[-1]["total"]}


_COLUMNS = ("AP", "AP50", "AP75", "train_images_per_s", "eval_s")


def _ratio(a: float, b: float) -> Optional[float]:
    """a / b, or None where b is 0 (e.g. an AP of 0 after a very short run)."""
    return a / b if b else None


def compare(config: Config, progress: bool = True) -> dict:
    """Train and evaluate fl_lab's model, then torchvision's, as ``config`` says.

    Returns {"config": dict, "rows": [fl_lab row, torchvision row], "ratio": {column: fl_lab / torchvision}};
    a row holds model, params, AP, AP50, AP75, train_images_per_s, eval_s, final_loss.
    """
    device = resolve_device(config.device)
    train_set, val_set = datasets(config)
    rows = []
    fl_model = build_model(config, train_set.num_classes)
    rows.append(_train_and_evaluate("fl_lab", fl_model, config.loss_kwargs(), train_set, val_set, config, device,
                                    progress))
    del fl_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tv_model = build_torchvision(train_set.num_classes, config)
    rows.append(_train_and_evaluate("torchvision", tv_model, None, train_set, val_set, config, device, progress))
    ratio = {k: _ratio(rows[0][k], rows[1][k]) for k in _COLUMNS}
    return {"config": {**dataclasses.asdict(config), "device": str(device)}, "rows": rows, "ratio": ratio}


def format_table(result: dict) -> str:
    """The side-by-side table :func:`main` prints."""
    def cell(value: Optional[float], width: int, digits: int) -> str:
        return f"{'n/a':>{width}}" if value is None or not math.isfinite(value) else f"{value:>{width}.{digits}f}"

    header = f"{'model':<22}{'params':>9}{'AP':>8}{'AP50':>8}{'AP75':>8}{'train img/s':>13}{'eval s':>9}"
    lines = [header, "-" * len(header)]
    for row in result["rows"]:
        lines.append(f"{row['model']:<22}{row['params'] / 1e6:>8.2f}M" + cell(row["AP"], 8, 3) + cell(row["AP50"], 8, 3)
                     + cell(row["AP75"], 8, 3) + cell(row["train_images_per_s"], 13, 2) + cell(row["eval_s"], 9, 2))
    r = result["ratio"]
    lines.append(f"{'fl_lab / torchvision':<22}{'':>9}" + cell(r["AP"], 8, 2) + cell(r["AP50"], 8, 2)
                 + cell(r["AP75"], 8, 2) + cell(r["train_images_per_s"], 13, 2) + cell(r["eval_s"], 9, 2))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/train_vs_torchvision.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu-fast", "gpu"), default="cpu-fast",
                        help="fl_lab.train.PRESETS entry to start from (default: cpu-fast)")
    for name, kind in (("steps", int), ("image-size", int), ("train-images", int), ("val-images", int),
                       ("batch-size", int), ("workers", int), ("seed", int), ("device", str), ("backbone", str)):
        parser.add_argument(f"--{name}", type=kind, help=f"override the preset's {name.replace('-', '_')}")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), help="override the preset's mixed precision")
    parser.add_argument("--json", metavar="PATH", help="also write the table (and the configuration) as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the comparison from command-line arguments; print the table and return :func:`compare`'s dict."""
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("preset", "json", "no_progress")}
    config = bench_config(args.preset, **overrides)
    base = PRESETS[args.preset]
    if (base["fpn_channels"], base["head_convs"]) != (config.fpn_channels, config.head_convs):
        print(f"note: torchvision fixes 256 FPN channels and 4 head convs; both models use them "
              f"(preset {args.preset}: {base['fpn_channels']} and {base['head_convs']})", file=sys.stderr)
    result = compare(config, progress=not args.no_progress)
    c = result["config"]
    print(f"{c['dataset']} {c['image_size']} px, {c['backbone']}, {c['steps']} steps of {c['batch_size']} images, "
          f"amp {c['amp']}, seed {c['seed']}, {c['train_images']} train / {c['val_images']} val images, {c['device']}")
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
