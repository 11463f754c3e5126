"""Backbone weights from elsewhere: torchvision's ImageNet ResNets.

* :func:`imagenet_weights` fetches torchvision's ImageNet weights of a ResNet into the torch hub
  cache, only when asked, through the kit's resumable, verified downloader;
* :func:`load_backbone_weights` loads ImageNet weights into a torchvision ResNet from a file, from
  the torch hub cache, or ``"imagenet"`` (fetched first) — the paper fine-tunes from ImageNet (§4.1);
* :func:`detector_resnet` builds the ResNet a detector fine-tunes (frozen BatchNorm, fixed stem and
  first stage) or trains from scratch — fl_lab's RetinaNet and lesson 07's Faster R-CNN share it.

torchvision's trained RetinaNet is loaded by :mod:`fl_lab.torchvision_weights`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["cached_imagenet_weights", "detector_resnet", "imagenet_weights", "load_backbone_weights"]


_IMAGENET = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
             "resnet101": "ResNet101_Weights"}


def _imagenet_url(backbone: str) -> str:
    """torchvision's URL of the ImageNet weights of ``backbone`` (its file name ends in a SHA-256 prefix)."""
    if backbone not in _IMAGENET:
        raise ValueError(f"no ImageNet weights for backbone {backbone!r}; choose one of {sorted(_IMAGENET)}")
    return getattr(torchvision.models, _IMAGENET[backbone]).IMAGENET1K_V1.url


def cached_imagenet_weights(backbone: str) -> Optional[Path]:
    """torchvision's ImageNet weights file of ``backbone`` if the torch hub cache holds it, else None
    (nothing is fetched: an offline machine can ask safely)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_imagenet_url(backbone))
    return path if path.is_file() else None


def imagenet_weights(backbone: str, url: Optional[str] = None, progress: bool = True) -> Path:
    """torchvision's ImageNet weights file of ``backbone`` ("resnet18" … "resnet101"), in the torch hub cache.

    Downloaded only if it is not there yet (resumable, and checked against the SHA-256 prefix in
    its file name, as torch hub does; a corrupt file is deleted), so torchvision finds it too.
    ``url`` replaces torchvision's (tests serve a file locally). Offline, ``ConnectionError``
    names the URL and where to put the file by hand.
    """
    from .data.archives import Resource, fetch

    url = url or _imagenet_url(backbone)
    filename = os.path.basename(url)
    prefix = re.search(r"-([a-f0-9]+)\.", filename)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    resource = Resource(url, filename, sha256_prefix=prefix.group(1) if prefix else None)
    try:
        return fetch(resource, cache, progress=progress)
    except ConnectionError as err:
        raise ConnectionError(f"{err}. Without a network: fetch {url} elsewhere and put it at {cache / filename}, "
                              "or pass the file's path as backbone weights") from None


def load_backbone_weights(resnet: nn.Module, weights: Union[str, os.PathLike, torchvision.models.WeightsEnum],
                          backbone: Optional[str] = None) -> None:
    """Load ImageNet weights into ``resnet``: a file, a torchvision weights enum already in the torch hub
    cache, or ``"imagenet"`` — torchvision's weights of ``backbone``, fetched by :func:`imagenet_weights`
    if they are not cached. Always loaded with ``weights_only=True``."""
    if isinstance(weights, str) and weights == "imagenet":
        if backbone is None:
            raise ValueError('backbone_weights="imagenet" needs the backbone\'s name (resnet18 … resnet101)')
        weights = imagenet_weights(backbone)
    if isinstance(weights, torchvision.models.WeightsEnum):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        if not path.is_file():
            raise FileNotFoundError(
                f"{weights} is not in the torch hub cache ({path}). fl_lab downloads nothing: fetch "
                f"{weights.url} on a machine with internet and copy it there, or pass the file's path."
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    try:
        missing, unexpected = resnet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: weights of another depth
        raise ValueError(f"{path} does not fit this ResNet: {str(err).splitlines()[1].strip()} …") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this ResNet: missing {missing[:5]}, unexpected {unexpected[:5]}")


def detector_resnet(backbone: str, weights: Union[None, str, os.PathLike, torchvision.models.WeightsEnum] = None,
                    frozen_bn: Optional[bool] = None) -> nn.Module:
    """torchvision's ResNet ``backbone`` as a detector's backbone.

    With ``weights`` (anything :func:`load_backbone_weights` takes) it is fine-tuned as in the
    paper's Detectron (§4.1): BatchNorm frozen, the stem and res2 fixed (FREEZE_AT = 2). Without,
    it trains from scratch with BatchNorm. ``frozen_bn`` overrides the BatchNorm choice: a
    fine-tuned run rebuilt for its checkpoint is frozen but loads no weights.
    """
    frozen = weights is not None if frozen_bn is None else frozen_bn
    norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    resnet = getattr(torchvision.models, backbone)(weights=None, norm_layer=norm)
    if weights is not None:
        load_backbone_weights(resnet, weights, backbone)
        for module in (resnet.conv1, resnet.layer1):
            module.requires_grad_(False)
    return resnet
