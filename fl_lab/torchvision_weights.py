"""torchvision's trained RetinaNet (``retinanet_resnet50_fpn``, v1) as fl_lab's, weights and all.

Lesson 05 measures the paper's Figure 4 on it: :func:`retinanet_from_torchvision` builds an fl_lab
:class:`~fl_lab.model.RetinaNet` configured as torchvision builds it and loads its state dict,
renamed by :func:`from_torchvision_keys`.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .anchors import AnchorGenerator
from .model import RetinaNet

__all__ = ["from_torchvision_keys", "retinanet_from_torchvision"]


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
        raise ValueError("not a torchvision RetinaNet state dict: "
                         "'head.classification_head.cls_logits.weight' is missing")
    return renamed


# torchvision's module names -> fl_lab's (the backbone is the same torchvision module).
_TORCHVISION_KEYS = (
    ("head.classification_head.conv.", "class_subnet.conv."),
    ("head.classification_head.cls_logits.", "class_subnet.out."),
    ("head.regression_head.conv.", "box_subnet.conv."),
    ("head.regression_head.bbox_reg.", "box_subnet.out."),
)


def retinanet_from_torchvision(model_or_state_dict: Union[nn.Module, dict], bn_eps: Optional[float] = None
                               ) -> RetinaNet:
    """An fl_lab copy of torchvision's ``retinanet_resnet50_fpn`` (v1) with its weights.

    Configured as torchvision builds it: ResNet-50, P6 from P5, the torchvision anchor preset
    (:meth:`AnchorGenerator.torchvision`), frozen BatchNorm. Pass the model or its state dict
    (e.g. ``torch.load(file, weights_only=True)`` of torchvision's COCO weights file; its older
    head-key format is accepted). K is read from the class output. Inputs must be normalised
    the same way (ImageNet mean and std), and for identical anchors the image sides must be
    multiples of 128.

    ``bn_eps``: the frozen BatchNorm's ε. By default it is read from a model; a state dict does
    not hold it, and then 0 is used, the value torchvision sets for its COCO_V1 weights (they
    come from a detectron-style training without ε).
    """
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
        if bn_eps is None:
            bn_eps = next((m.eps for m in model_or_state_dict.modules() if hasattr(m, "running_var")), 1e-5)
    else:
        state = dict(model_or_state_dict)
    bn_eps = 0.0 if bn_eps is None else float(bn_eps)
    renamed = from_torchvision_keys(state)
    num_anchors = renamed["box_subnet.out.weight"].shape[0] // 4
    num_classes = renamed["class_subnet.out.weight"].shape[0] // num_anchors
    model = RetinaNet(num_classes, backbone="resnet50", p6_from="p5", anchor_generator=AnchorGenerator.torchvision(),
                      frozen_bn=True)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = bn_eps
    renamed["foreground_ema"] = model.foreground_ema
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ValueError(f"torchvision state dict does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
