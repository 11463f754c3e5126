"""Training RetinaNet: one readable loop and its command line (paper §4.1 "Optimization").

SGD with momentum 0.9 and weight decay 1e-4; a linear warm-up; the learning rate divided
by 10 at 2/3 and 8/9 of the run (the paper's 60k and 80k of 90k iterations); horizontal
flips the only augmentation.

    python -m fl_lab.train --preset cpu-fast            # Shapes, ResNet-18, minutes on a CPU
    python -m fl_lab.train --preset gpu                 # Shapes at 512 px, ResNet-50, ~10 min on an H100
    python -m fl_lab.train --preset coco --data-root data/coco --backbone-weights r50.pth
    python -m fl_lab.train --resume runs/cpu-fast       # continue exactly where it stopped
    torchrun --nproc_per_node=8 -m fl_lab.train --preset coco ...   # DistributedDataParallel

A run folder holds ``config.json``, ``log.jsonl`` (one JSON object per logged step),
``last.pt`` (the latest checkpoint, replaced atomically) and ``metrics.json`` (the final AP).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import CocoDataset, Resize, Shapes, VOCDataset, collate
from .data.sampler import FlipByKey, TrainSampler
from .evaluate import evaluate
from .model import LOSS_FUNCTIONS, RetinaNet

__all__ = ["PRESETS", "Config", "Diverged", "load_checkpoint", "load_run", "lr_multiplier", "read_log", "run", "sgd",
           "train"]


# ------------------------------------------------------------------------------ configuration
def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    """Everything a run needs; each field is also a command-line option (``--field-name``)."""

    # data
    dataset: str = _opt("shapes", "shapes (built in), coco or voc", choices=("shapes", "coco", "voc"))
    data_root: str = _opt("data", "coco: folder with train2017/, val2017/, annotations/; voc: folder with VOCdevkit/")
    image_size: int = _opt(128, "Shapes: image side; COCO/VOC: shorter side after resizing (paper: 600 or 800)")
    max_size: int = _opt(1333, "COCO/VOC: cap on the longer side after resizing")
    train_images: int = _opt(2000, "Shapes: training images")
    val_images: int = _opt(200, "Shapes: validation images (a different seed)")
    num_classes: int = _opt(5, "Shapes: number of shape classes (COCO and VOC bring their own)")
    max_objects: int = _opt(30, "Shapes: most objects per image")
    min_object_size: float = _opt(8.0, "Shapes: smallest object side in pixels")
    # model
    backbone: str = _opt("resnet18", "resnet18, resnet34, resnet50 or resnet101")
    fpn_channels: int = _opt(256, "channels of P3-P7 and the heads (paper: 256)")
    head_convs: int = _opt(4, "3x3 convs in each subnet before its output (paper: 4)")
    head_norm: Optional[str] = _opt(None, "None or gn (GroupNorm in the heads)")
    backbone_weights: Optional[str] = _opt(None, "ImageNet weights file for the ResNet (none: from scratch)")
    prior: Optional[float] = _opt(0.01, "the class prior pi of the initialisation (paper: 0.01; None: bias 0)")
    # loss
    loss_fn: str = _opt("focal", "focal, ce, balanced_ce, focal_star or ohem (cross-entropy on the hardest anchors)",
                        choices=("focal", "ce", "balanced_ce", "focal_star", "ohem"))
    gamma: float = _opt(2.0, "focusing parameter of focal / focal_star (paper: 2)")
    alpha: Optional[float] = _opt(None, "weight of positives; None: the loss's own (the paper's best: focal 0.25, "
                                  "balanced_ce 0.75, focal_star unweighted); ignored by ce and ohem")
    ohem_batch: int = _opt(128, "ohem: anchors per image kept after NMS, highest loss first (paper Table 1d: 128, 256)")
    ohem_nms: float = _opt(0.5, "ohem: IoU threshold of the NMS over anchors' predicted boxes (paper: 0.5, 0.7)")
    ohem_max_pos_fraction: Optional[float] = _opt(None, "ohem: at most this share of positives (0.25 = SSD's 1:3; "
                                                  "None: no cap)")
    box_loss: str = _opt("l1", "l1 (torchvision, detectron2) or smooth_l1 (paper)", choices=("l1", "smooth_l1"))
    normalize: str = _opt("batch", "loss normaliser: batch (paper), per_image (torchvision), ema (detectron2)",
                          choices=("batch", "per_image", "ema"))
    # optimisation
    steps: int = _opt(1000, "training iterations")
    batch_size: int = _opt(8, "images per iteration, over all processes (paper: 16)")
    lr: float = _opt(0.01, "base learning rate (paper: 0.01 at batch 16)")
    warmup: int = _opt(100, "iterations of linear warm-up from lr/3")
    momentum: float = _opt(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = _opt(1e-4, "weight decay (paper: 1e-4)")
    amp: str = _opt("none", "mixed precision: none, bf16 or fp16 (fp16 adds a gradient scaler)", choices=("none", "bf16", "fp16"))
    # run
    seed: int = _opt(0, "seed of the weights, the data order and the flips")
    device: str = _opt("auto", "auto (CUDA if present), cpu, cuda or cuda:N")
    workers: int = _opt(2, "DataLoader worker processes")
    out: str = _opt("runs/default", "run folder: config, log, checkpoint, metrics")
    checkpoint_every: int = _opt(500, "write last.pt every N iterations (and always at the end)")
    log_every: int = _opt(10, "append to log.jsonl every N iterations")
    stop_after: Optional[int] = _opt(None, "stop (with a checkpoint) after this many iterations; --resume continues")
    evaluate: bool = _opt(True, "evaluate AP on the validation set at the end")

    def loss_kwargs(self) -> dict:
        """Arguments of :meth:`RetinaNet.loss` for this configuration: the named loss of
        :data:`fl_lab.model.LOSS_FUNCTIONS` with this configuration's parameters."""
        alpha = {} if self.alpha is None else {"alpha": self.alpha}
        params = {
            "focal": dict(gamma=self.gamma, **alpha),
            "ce": {},
            "balanced_ce": alpha,
            "focal_star": dict(gamma=self.gamma, **alpha),
            "ohem": dict(batch_size=self.ohem_batch, nms_thresh=self.ohem_nms,
                         max_pos_fraction=self.ohem_max_pos_fraction),
        }[self.loss_fn]
        fn = partial(LOSS_FUNCTIONS[self.loss_fn], **params)
        return {"loss_fn": fn, "box_loss": self.box_loss, "normalize": self.normalize}


#: Named starting points; any field can still be overridden on the command line.
PRESETS: dict[str, dict] = {
    # Shapes at 128 px (at most 10 objects, from 12 px) with a small ResNet-18 model and GroupNorm
    # heads, which learn faster from scratch: about 3 minutes on two CPU cores.
    "cpu-fast": dict(image_size=128, train_images=1024, val_images=64, max_objects=10, min_object_size=12.0,
                     backbone="resnet18", fpn_channels=64, head_convs=2, head_norm="gn", batch_size=8, steps=500,
                     lr=0.02, warmup=50, workers=1, checkpoint_every=100, out="runs/cpu-fast"),
    # Shapes at 512 px, ResNet-50-FPN, batch 16, bf16: sized for about 10 minutes on one H100.
    "gpu": dict(image_size=512, train_images=16000, val_images=500, backbone="resnet50", fpn_channels=256,
                head_convs=4, batch_size=16, steps=3000, lr=0.01, warmup=300, amp="bf16", workers=12,
                checkpoint_every=500, log_every=20, out="runs/gpu"),
    # The paper's recipe on COCO 2017 (train2017 / val2017): 90k iterations at batch 16.
    "coco": dict(dataset="coco", data_root="data/coco", image_size=800, max_size=1333, backbone="resnet50",
                 fpn_channels=256, head_convs=4, batch_size=16, steps=90_000, lr=0.01, warmup=500, amp="bf16",
                 workers=8, checkpoint_every=5000, log_every=20, out="runs/coco"),
}


# ------------------------------------------------------------------------------ the loop
class Diverged(FloatingPointError):
    """Training produced a non-finite loss or output; ``history`` holds the steps before it."""

    def __init__(self, message: str, history: list[dict]):
        super().__init__(message)
        self.history = history


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """The paper's optimiser over the model's trainable parameters."""
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


def lr_multiplier(step: int, total: int, warmup: int = 500, warmup_factor: float = 1 / 3) -> float:
    """Factor on the base learning rate at ``step`` of ``total``.

    Linear warm-up from ``warmup_factor`` to 1 over the first ``warmup`` steps (detectron's
    500 steps from 1/3), then ÷10 at 2/3 and again at 8/9 of the run (60k and 80k of 90k).
    """
    factor = 1.0
    if step < warmup:
        factor = warmup_factor + (1 - warmup_factor) * step / warmup
    return factor * 0.1 ** sum(step >= m * total for m in (2 / 3, 8 / 9))


def train(
    model: nn.Module,
    batches: Iterable,
    steps: int,
    lr: float = 0.01,
    warmup: int = 500,
    loss_kwargs: Optional[dict] = None,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    amp: str = "none",
    out: Union[None, str, Path] = None,
    checkpoint_every: int = 0,
    log_every: int = 1,
    stop_after: Optional[int] = None,
    resume_from: Optional[dict] = None,
    extra_state: Optional[dict] = None,
) -> list[dict]:
    """Train ``model`` and return one dict of numbers per step run.

    Args:
        model: a :class:`fl_lab.model.RetinaNet` (or a model with its interface: ``forward``
            returning a tuple of tensors, ``loss`` — e.g. :class:`fl_lab.compare.TorchvisionDetector`),
            or one wrapped in DistributedDataParallel.
        batches: :class:`fl_lab.data.transforms.Batch` objects, starting at the first step
            to run (e.g. a DataLoader with ``collate_fn=collate``); restarted when exhausted.
        steps, lr, warmup, momentum, weight_decay: the schedule (see :func:`lr_multiplier`).
        loss_kwargs: passed to :meth:`RetinaNet.loss` (``loss_fn``, ``normalize``, …).
        device: default: CUDA if available, else CPU. amp: "none", "bf16" or "fp16".
        out: a folder for ``last.pt`` (every ``checkpoint_every`` steps and at the end) and
            ``log.jsonl`` (every ``log_every`` steps); None keeps nothing on disk.
        stop_after: stop after this step (a checkpoint is written); resume later.
        resume_from: a checkpoint from :func:`load_checkpoint`: continue exactly from it.
        extra_state: saved into every checkpoint as is (:func:`run` saves the config and class count).

    Raises:
        Diverged: on a non-finite output or loss, naming the step; ``.history`` keeps the
            steps before it and the last checkpoint on disk is the last good one.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    model.to(device).train()
    optimizer = sgd(core, lr, momentum, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_multiplier, total=steps, warmup=warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    autocast = partial(torch.autocast, device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                       enabled=amp != "none")
    start = 0
    if resume_from is not None:
        core.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        scaler.load_state_dict(resume_from["scaler"])
        torch.set_rng_state(resume_from["rng"]["torch"])
        if torch.cuda.is_available() and resume_from["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(resume_from["rng"]["cuda"])
        start = resume_from["step"]
    main = not dist.is_initialized() or dist.get_rank() == 0
    out = Path(out) if out is not None and main else None
    end = steps if stop_after is None else min(steps, stop_after)
    if end < start:  # the checkpoint would be relabelled with an earlier step and resume wrongly
        raise ValueError(f"stop_after={stop_after} is before the checkpoint's step {start}: nothing to run")
    log = _open_log(out, start) if out else None

    def checkpoint(step: int) -> None:
        if out:
            _save_atomic({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                          "rng": {"torch": torch.get_rng_state(),
                                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                          "extra": extra_state or {}}, out / "last.pt")

    stream = itertools.chain.from_iterable(itertools.repeat(batches))
    history: list[dict] = []
    # Redraw at most every 2 s: in a notebook each redraw is a widget message, and a flood of them
    # overflows the kernel's output queue (its high-water mark) so that later messages are lost.
    bar = tqdm(range(start, end), initial=start, total=end, desc="train", disable=not (progress and main), mininterval=2.0)
    tick = time.perf_counter()
    try:
        for step in bar:
            batch = next(stream).to(device, non_blocking=True)
            with autocast():
                output = model(batch.images)
            if not all(bool(torch.isfinite(t).all()) for t in output if isinstance(t, torch.Tensor) and t.is_floating_point()):
                raise Diverged(_diverged_message(step, "the model's outputs", out), history)
            losses = core.loss(output, batch.targets, **(loss_kwargs or {}))
            if not math.isfinite(losses["total"].item()):
                raise Diverged(_diverged_message(step, "the loss", out), history)
            row = {"step": step, "lr": optimizer.param_groups[0]["lr"], **{k: v.item() for k, v in losses.items()}}
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            now = time.perf_counter()
            world = dist.get_world_size() if dist.is_initialized() else 1
            row["images_per_s"] = len(batch.targets) * world / (now - tick)
            tick = now
            history.append(row)
            bar.set_postfix(loss=f"{row['total']:.3f}", lr=f"{row['lr']:.2g}", img_s=f"{row['images_per_s']:.1f}")
            if log and (step % log_every == 0 or step == end - 1):
                log.write(json.dumps(row) + "\n")
                log.flush()
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < end:
                checkpoint(step + 1)
        checkpoint(end)
    finally:  # also on Diverged: the rows logged so far reach the disk
        if log:
            log.close()
    return history


def _diverged_message(step: int, what: str, out: Optional[Path]) -> str:
    kept = f" The last good checkpoint is {out / 'last.pt'}." if out and (out / "last.pt").exists() else ""
    return (f"training diverged at iteration {step}: {what} became NaN or infinite. Usual causes: a learning "
            f"rate too high for the batch, or a class head without the prior initialisation (prior=0.01).{kept}")


def _save_atomic(state: dict, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)  # and the rename itself
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> dict:
    """A checkpoint written by :func:`train` (tensors and plain values only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def _open_log(out: Path, start: int):
    """log.jsonl for appending, keeping only the step rows before ``start`` (a fresh run starts it anew)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "log.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if _step_of(line) < start]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def _step_of(line: str) -> float:
    """A log row's step; inf (so dropped on resume) for rows without one and for a line a killed run left half-written."""
    try:
        return json.loads(line).get("step", math.inf)
    except json.JSONDecodeError:
        return math.inf


def read_log(path: Union[str, Path]) -> list[dict]:
    """The rows of a run's ``log.jsonl`` (pass the file or its run folder).

    A half-written last line (the run was killed while writing it) is left out; an
    unreadable line elsewhere raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    path = path / "log.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON ({err})") from None
    return rows


# ------------------------------------------------------------------------------ a whole run
def datasets(config: Config) -> tuple:
    """(training set, validation set) for the configuration."""
    if config.dataset == "shapes":
        make = partial(Shapes, image_size=config.image_size, num_classes=config.num_classes,
                       max_objects=config.max_objects, min_size=config.min_object_size)
        return make(config.train_images, seed=config.seed), make(config.val_images, seed=config.seed + 10_000)
    resize = Resize(config.image_size, config.max_size)
    root = Path(config.data_root)
    if config.dataset == "coco":
        return (CocoDataset(root / "train2017", root / "annotations" / "instances_train2017.json", transform=resize),
                CocoDataset(root / "val2017", root / "annotations" / "instances_val2017.json", transform=resize))
    return (VOCDataset(root, image_set="train", transform=resize), VOCDataset(root, image_set="val", transform=resize))


def build_model(config: Config, num_classes: int) -> RetinaNet:
    """The configured RetinaNet, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return RetinaNet(num_classes, backbone=config.backbone, fpn_channels=config.fpn_channels,
                     head_convs=config.head_convs, prior=config.prior, head_norm=config.head_norm,
                     backbone_weights=config.backbone_weights)


def load_run(out: Union[str, Path], device: Union[str, torch.device] = "cpu") -> tuple[RetinaNet, Config]:
    """The model a run folder's ``last.pt`` holds, in eval mode, and the run's configuration.

    The architecture comes from the configuration saved in the checkpoint, the weights from
    the checkpoint itself (so a ``backbone_weights`` file need not exist any more).
    """
    state = load_checkpoint(Path(out) / "last.pt", map_location=device)
    try:
        config, num_classes = Config(**state["extra"]["config"]), int(state["extra"]["num_classes"])
    except (KeyError, TypeError):
        raise ValueError(f"{Path(out) / 'last.pt'} holds no run configuration (written by an older fl_lab, or not by "
                         "fl_lab.train.run): train it again, e.g. with lesson 04 or python -m fl_lab.train") from None
    model = build_model(dataclasses.replace(config, backbone_weights=None), num_classes)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def run(config: Config, resume: bool = False, progress: bool = True,
        build: Optional[Callable[[Config, int], nn.Module]] = None) -> dict:
    """Train (and evaluate) as configured; with ``resume`` continue from ``config.out``/last.pt.

    ``build(config, num_classes)`` makes the model (default :func:`build_model`, a RetinaNet;
    :mod:`fl_lab.compare` passes torchvision's detectors, which then get the same data,
    schedule and evaluation). Returns {"model": the trained model, "history": rows of this
    call, "metrics": AP dict or None, "out": run folder}.
    Under ``torchrun`` each process runs this; rank 0 writes the files.
    """
    rank, world, device = _setup_distributed(config.device)
    out = Path(config.out)
    state = load_checkpoint(out / "last.pt") if resume else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    train_set, val_set = datasets(config)
    model = (build or build_model)(config, train_set.num_classes).to(device)
    sampler = TrainSampler(len(train_set), config.batch_size, config.seed, start_step=state["step"] if state else 0,
                           rank=rank, world_size=world)
    loader = DataLoader(FlipByKey(train_set), batch_sampler=sampler, collate_fn=collate, num_workers=config.workers,
                        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    history = train(wrapped, loader, config.steps, config.lr, config.warmup, config.loss_kwargs(), device, progress,
                    momentum=config.momentum, weight_decay=config.weight_decay, amp=config.amp, out=out,
                    checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                    stop_after=config.stop_after, resume_from=state,
                    extra_state={"config": dataclasses.asdict(config), "num_classes": train_set.num_classes})
    if world > 1:
        _check_replicas(model, out if rank == 0 else None)
    metrics = None
    finished = config.stop_after is None or config.stop_after >= config.steps
    if rank == 0 and config.evaluate and finished:
        metrics = evaluate(model, val_set, batch_size=config.batch_size, device=device, progress=progress)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if world > 1:
        dist.destroy_process_group()
    return {"model": model, "history": history, "metrics": metrics, "out": out}


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, local = (dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else (0, 0)
    if device == "auto":
        device = f"cuda:{local}" if cuda else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def _check_replicas(model: nn.Module, out: Optional[Path]) -> None:
    """Assert that every process ended with the same weights (DDP keeps them in step); log it.

    Only parameters are compared: BatchNorm's running statistics are each replica's own
    until DDP copies rank 0's at the next forward pass (rank 0's are the ones saved).
    """
    checksum = torch.stack([(i + 1) * p.detach().double().sum() for i, p in enumerate(model.parameters())]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    identical = bool(low == high)
    if out is not None:
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps({"replicas": dist.get_world_size(), "replicas_identical": identical}) + "\n")
    if not identical:
        raise RuntimeError(f"replicas diverged: weight checksums range from {low.item()} to {high.item()}")


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fl_lab.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named configuration: "
                        + "; ".join(f"{k}: {v.get('dataset', 'shapes')} at {v['image_size']} px, {v['backbone']}, "
                                    f"{v['steps']} steps" for k, v in PRESETS.items()))
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last.pt "
                        "(its saved configuration is used; only --stop-after may change)")
    for f in dataclasses.fields(Config):  # absent options stay out of the namespace (SUPPRESS): "none" is a value
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f.metadata["help"])
        else:
            parser.add_argument(name, type=_parse_value(f), default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                                help=f"{f.metadata['help']} (default: {f.default})")
    return parser


def _parse_value(f: dataclasses.Field):
    kind = {"int": int, "float": float, "str": str}[f.type.replace("Optional[", "").rstrip("]")]
    return (lambda s: None if s.lower() == "none" else kind(s)) if f.type.startswith("Optional") else kind


def config_from_args(argv: Optional[list[str]] = None) -> tuple[Config, bool]:
    """(Config, resume?) from command-line arguments: preset, then explicit options."""
    args = _parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in ("preset", "resume")}
    if args.resume:
        saved = json.loads((Path(args.resume) / "config.json").read_text())
        unexpected = set(given) - {"stop_after"}
        if unexpected:
            raise SystemExit(f"--resume uses the run's saved configuration; do not pass {sorted(unexpected)}")
        saved["stop_after"] = given.get("stop_after")
        return Config(**{**saved, "out": args.resume}), True
    config = Config(**{**PRESETS.get(args.preset, {}), **given})
    if args.preset in ("gpu", "coco") and config.device == "auto" and not torch.cuda.is_available():
        # Say so before the first iteration: the run would otherwise just look frozen.
        print(f"note: the {args.preset} preset is sized for a GPU and this machine has none, so it trains on the CPU: "
              f"{config.steps} iterations of {config.batch_size} images at {config.image_size} px take hours (the gpu "
              "preset: about 15 s an iteration, 12 h, on two CPU cores). --preset cpu-fast trains in minutes on a "
              "CPU; --stop-after N stops early with a checkpoint.", file=sys.stderr)
    return config, False


def main(argv: Optional[list[str]] = None) -> int:
    config, resume = config_from_args(argv)
    try:
        result = run(config, resume=resume)
    except Diverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result["metrics"] is not None:
        print("  ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
