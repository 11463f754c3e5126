"""A whole run from a :class:`~fl_lab.train.config.Config`: data, model, training, evaluation, and the
model a run folder holds."""

from __future__ import annotations

import dataclasses
import json
import os
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..anchors import AnchorGenerator
from ..data import CocoDataset, Resize, Shapes, VOCDataset, collate
from ..data.sampler import FlipByKey, TrainSampler
from ..evaluate import evaluate
from ..model import RetinaNet
from ..pretrain import shapes_weights
from ..torch_utils import resolve_device
from ..weights import cached_imagenet_weights, imagenet_weights
from .config import ANCHOR_RATIOS, Config
from .loop import load_checkpoint, train

__all__ = ["anchor_generator", "build_model", "datasets", "load_run", "read_config", "run", "write_config"]


def datasets(config: Config) -> tuple:
    """(training set, validation set) for the configuration."""
    if config.dataset == "shapes":
        make = partial(Shapes, image_size=config.image_size, num_classes=config.num_classes,
                       min_objects=config.min_objects, max_objects=config.max_objects,
                       empty_fraction=config.empty_fraction, min_size=config.min_object_size,
                       max_size=config.max_object_size,
                       transform=Resize(config.input_size, config.input_size) if config.input_size else None)
        return make(config.train_images, seed=config.seed), make(config.val_images, seed=config.seed + 10_000)
    resize = Resize(config.image_size, config.max_size)
    root = Path(config.data_root)
    if config.dataset == "coco":
        return (CocoDataset(root / "train2017", root / "annotations" / "instances_train2017.json", transform=resize),
                CocoDataset(root / "val2017", root / "annotations" / "instances_val2017.json", transform=resize))
    return (VOCDataset(root, image_set="train", transform=resize), VOCDataset(root, image_set="val", transform=resize))


def anchor_generator(config: Config) -> AnchorGenerator:
    """The paper's P3-P7 anchors with the configuration's number of scales and aspect ratios (Table 1c)."""
    config.check()
    n = config.anchor_scales
    return AnchorGenerator(scales=tuple(2 ** (k / n) for k in range(n)),
                           aspect_ratios=ANCHOR_RATIOS[config.anchor_ratios])


def backbone_weights_file(config: Config) -> Optional[str]:
    """The backbone weights file ``config`` fine-tunes from: ``backbone_weights`` with ``"shapes"``
    resolved to its cache file (:func:`fl_lab.pretrain.shapes_weights`, made once), ``"imagenet"``
    to torchvision's (:func:`fl_lab.weights.imagenet_weights`, fetched once) and ``"pretrained"``
    to torchvision's ImageNet file if the torch hub cache holds it, else to ``"shapes"``'s (nothing
    is downloaded); None from scratch."""
    if config.backbone_weights == "pretrained":
        cached = cached_imagenet_weights(config.backbone)
        if cached is not None:
            return str(cached)
    if config.backbone_weights in ("shapes", "pretrained"):
        device = None if config.device == "auto" else config.device
        return str(shapes_weights(config.backbone, device=device))
    if config.backbone_weights == "imagenet":
        return str(imagenet_weights(config.backbone))
    return config.backbone_weights


def build_model(config: Config, num_classes: int, load_weights: bool = True) -> RetinaNet:
    """The configured RetinaNet, initialised from ``config.seed``. ``backbone_weights="shapes"``:
    the backbone pretrained on Shapes crops (:func:`fl_lab.pretrain.shapes_weights`, made once).
    ``load_weights=False``: the same architecture (frozen BatchNorm if the run fine-tuned), for a
    checkpoint's weights to be loaded into."""
    weights = backbone_weights_file(config) if load_weights else None
    torch.manual_seed(config.seed)
    return RetinaNet(num_classes, backbone=config.backbone, fpn_channels=config.fpn_channels,
                     head_convs=config.head_convs, prior=config.prior, head_norm=config.head_norm,
                     backbone_weights=weights, frozen_bn=config.backbone_weights is not None,
                     anchor_generator=anchor_generator(config))


CONFIG = "config.json"


def write_config(out: Path, config: Config) -> None:
    """The one serialisation of a run's configuration: ``out/config.json`` (read by :func:`read_config`)."""
    (out / CONFIG).write_text(json.dumps(dataclasses.asdict(config), indent=2))


def read_config(out: Union[str, Path]) -> Config:
    """The configuration a run folder saved (:meth:`Config.from_json` of its ``config.json``); a missing,
    unreadable or foreign file is a ``ValueError`` naming it."""
    path = Path(out) / CONFIG
    if not path.is_file():
        raise ValueError(f"{path} not found: {Path(out)} is not a run of fl_lab.train")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    return Config.from_json(saved, str(path))


def load_run(out: Union[str, Path], device: Union[str, torch.device] = "cpu") -> tuple[RetinaNet, Config]:
    """The model a run folder's ``last.pt`` holds, in eval mode, and the run's configuration.

    The architecture comes from the run's ``config.json`` (:func:`read_config`), the weights from
    the checkpoint itself (so a ``backbone_weights`` file need not exist any more).
    """
    config = read_config(out)
    state = load_checkpoint(Path(out) / "last.pt", map_location=device)
    try:
        num_classes = int(state["extra"]["num_classes"])
    except (KeyError, TypeError):
        raise ValueError(f"{Path(out) / 'last.pt'} does not say its number of classes (written by an older fl_lab, "
                         "or not by fl_lab.train.run): train it again, e.g. with lesson 04 or python -m fl_lab.train"
                         ) from None
    model = build_model(config, num_classes, load_weights=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def run(config: Config, resume: bool = False, progress: bool = True,
        build: Optional[Callable[[Config, int], nn.Module]] = None, time_budget_s: Optional[float] = None,
        monitor: Optional[Callable] = None) -> dict:
    """Train (and evaluate) as configured; with ``resume`` continue from ``config.out``/last.pt.

    ``build(config, num_classes)`` makes the model (default :func:`build_model`, a RetinaNet;
    :mod:`fl_lab.compare` passes torchvision's detectors, which then get the same data,
    schedule and evaluation). ``time_budget_s`` stops training at the first log step after that
    many seconds (a checkpoint is written; ``--resume`` can finish the run), and the model is
    evaluated as it is; ``metrics.json`` is written only by a run that reached ``config.steps``.
    ``monitor``: passed to :func:`fl_lab.train.train` (e.g. a :class:`fl_lab.analysis.LossShareMonitor`).
    Returns {"model": the trained model, "history": rows of this call, "metrics": AP dict or
    None, "finished": whether the run reached ``config.steps``, "out": run folder}.
    Under ``torchrun`` each process runs this; rank 0 writes the files (and makes a missing
    pretrained backbone first, while the others wait). A setting out of range, or a CUDA device
    that is not there, raises ``ValueError`` naming the option before anything runs.
    """
    config.check()
    rank, world, device = _setup_distributed(config.device)
    out = Path(config.out)
    state = load_checkpoint(out / "last.pt") if resume else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, config)
    if world > 1:  # one process makes the backbone's weights file, the others then read it
        if rank == 0 and build is None:
            backbone_weights_file(config)
        dist.barrier()
    train_set, val_set = datasets(config)
    model = (build or build_model)(config, train_set.num_classes).to(device)
    start = state["step"] if state else 0
    sampler = TrainSampler(len(train_set), config.batch_size, config.seed, start_step=start, rank=rank,
                           world_size=world)
    loader = DataLoader(FlipByKey(train_set), batch_sampler=sampler, collate_fn=collate, num_workers=config.workers,
                        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    settings = dataclasses.replace(config.train_settings(), time_budget_s=time_budget_s)
    history = train(wrapped, loader, settings, device, out=out, resume_from=state, progress=progress,
                    extra_state={"num_classes": train_set.num_classes}, monitor=monitor)
    if world > 1:
        _check_replicas(model, out if rank == 0 else None)
    finished = start + len(history) == config.steps
    metrics = None
    if rank == 0 and config.evaluate and (finished or time_budget_s is not None):
        metrics = evaluate(model, val_set, batch_size=config.batch_size, device=device, progress=progress)
        if finished:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if world > 1:
        dist.destroy_process_group()
    return {"model": model, "history": history, "metrics": metrics, "finished": finished, "out": out}


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    resolve_device(device)  # a CUDA device this machine lacks: a ValueError naming it, before any process group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, local = (dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else (0, 0)
    device = resolve_device(device, local_rank=local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def _check_replicas(model: nn.Module, out: Optional[Path]) -> None:
    """Assert that every process ended with the same weights (DDP keeps them in step); log it.

    Only parameters are compared: BatchNorm's running statistics are each replica's own
    until DDP copies rank 0's at the next forward pass (rank 0's are the ones saved).
    """
    checksum = torch.stack([(i + 1) * p.detach().double().sum()
                            for i, p in enumerate(model.parameters())]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    identical = bool(low == high)
    if out is not None:
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps({"replicas": dist.get_world_size(), "replicas_identical": identical}) + "\n")
    if not identical:
        raise RuntimeError(f"replicas diverged: weight checksums range from {low.item()} to {high.item()}")
