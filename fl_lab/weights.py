"""Weights from elsewhere: ImageNet backbones and torchvision's trained RetinaNet.

* :func:`load_backbone_weights` loads ImageNet weights into a torchvision ResNet from a file or
  from the torch hub cache (the paper fine-tunes from ImageNet, §4.1);
* :func:`from_torchvision_keys` renames a torchvision ``retinanet_resnet50_fpn`` state dict to
  fl_lab's module names (:meth:`fl_lab.model.RetinaNet.from_torchvision` uses it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union

import torch
import torchvision
from torch import Tensor, nn

__all__ = ["from_torchvision_keys", "load_backbone_weights"]


def from_torchvision_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision RetinaNet state dict with fl_lab's key names (the backbone's are the same).

    BatchNorm's ``num_batches_tracked`` counters are dropped (frozen BatchNorm has none), and the
    older head-key format of torchvision < 0.13 (``conv.N.weight``) is accepted.
    """
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = re.sub(r"^(head\.\w+_head\.conv\.\d+)\.(weight|bias)$", r"\1.0.\2", key)
        for old, new in _TORCHVISION_KEYS:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    if "class_subnet.out.weight" not in renamed:
        raise ValueError("not a torchvision RetinaNet state dict: 'head.classification_head.cls_logits.weight' is missing")
    return renamed


# torchvision's module names -> fl_lab's (the backbone is the same torchvision module).
_TORCHVISION_KEYS = (
    ("head.classification_head.conv.", "class_subnet.conv."),
    ("head.classification_head.cls_logits.", "class_subnet.out."),
    ("head.regression_head.conv.", "box_subnet.conv."),
    ("head.regression_head.bbox_reg.", "box_subnet.out."),
)


def load_backbone_weights(resnet: nn.Module, weights: Union[str, os.PathLike, torchvision.models.WeightsEnum]) -> None:
    """Load ImageNet weights into ``resnet`` from a file or from the torch hub cache; never download."""
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
