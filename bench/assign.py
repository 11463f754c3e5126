"""Target assignment: fl_lab's batched ``assign_targets`` against what torchvision's RetinaNet does per image.

The work, for a batch of 16 images at 640×640 with 0–50 objects each (the counts spread
evenly over 0..50, 400 boxes in all; random valid boxes with sides 8–512 px, seed 0) and
K = 80 classes, on the same 76,725 anchors (fl_lab's ``AnchorGenerator().gen((640, 640))``,
made once beforehand: anchor generation is in neither timing):

- **fl_lab** — ``pad_targets`` + ``assign_targets`` with the model's defaults (``Matcher()``:
  0.5 / 0.4 with low-quality matches, ``BoxCoder()``), the whole batch at once: class targets
  in index form (B, A) (class, -1 background, -2 ignored; what fl_lab's focal loss takes) and
  box targets (B, A, 4). Its input checks are timed too.
- **torchvision** — the code of ``RetinaNet.compute_loss`` and its heads' ``compute_loss``, in
  their Python loop over images: ``box_ops.box_iou`` and ``Matcher(0.5, 0.4,
  allow_low_quality_matches=True)`` (all -1 for an image without boxes, as there), a dense
  one-hot class target (A, K) from ``torch.zeros_like(cls_logits)`` (what its sigmoid focal
  loss takes), the ignore mask, and ``BoxCoder((1, 1, 1, 1)).encode_single`` of the matched
  boxes of foreground anchors. No loss is computed on either side.

Before anything is timed, both results are checked to be the same assignment — the same
foreground anchors, matched box and class of each, ignored anchors, and box targets
(allclose) — and the script stops if not. Times are medians of ``--repeats`` runs after two
warm-up runs each, fl_lab and torchvision interleaved so that load changes on a shared
machine hit both alike.

    python bench/assign.py [--device auto|cpu|cuda] [--repeats 7] [--quick] [--results bench/results]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_parser, device_from, format_table, machine, ratio, write_json

from fl_lab.anchors import AnchorGenerator
from fl_lab.boxes import random_boxes
from fl_lab.loss import IGNORE
from fl_lab.matcher import AssignedTargets, assign_targets, pad_targets
from fl_lab.torch_utils import median_ms

NUM_CLASSES = 80
#: (images, image side, most objects in an image)
CASE = (16, 640, 50)
QUICK_CASE = (2, 128, 5)


def make_targets(images: int, side: int, most: int, device: torch.device,
                 seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """Boxes (G_i, 4) and labels (G_i,) per image, G_i spread evenly over 0..most."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.linspace(0, most, images).round().long().tolist()
    boxes = [random_boxes(n, (side, side), 8, 512, generator=g).to(device) for n in counts]
    labels = [torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device) for n in counts]
    return boxes, labels


def fl_lab_assign(anchors: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> AssignedTargets:
    """labels (B, A) in index form, box targets (B, A, 4)."""
    return assign_targets(anchors, *pad_targets(boxes, labels))


class TorchvisionAssign:
    """torchvision RetinaNet's target code, per image.

    Returns per image: matched box index (A,) (-1 background, -2 ignored), one-hot classes
    (A, K), the not-ignored mask (A,) and the box targets of the F foreground anchors (F, 4).
    """

    def __init__(self) -> None:
        self.matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def __call__(self, anchors: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> list[tuple[Tensor, ...]]:
        out = []
        for boxes_i, labels_i in zip(boxes, labels, strict=True):
            # RetinaNet.compute_loss
            if boxes_i.numel() == 0:
                matched = torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
            else:
                matched = self.matcher(box_iou(boxes_i, anchors))
            # RetinaNetClassificationHead.compute_loss (cls_logits of one image is (A, K))
            foreground = matched >= 0
            classes = torch.zeros(len(anchors), NUM_CLASSES, device=anchors.device)
            classes[foreground, labels_i[matched[foreground]]] = 1.0
            valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
            # RetinaNetRegressionHead.compute_loss
            regression = self.box_coder.encode_single(boxes_i[matched[foreground]], anchors[foreground])
            out.append((matched, classes, valid, regression))
        return out


def check_same(ours: AssignedTargets, theirs: list[tuple[Tensor, ...]]) -> int:
    """Raise unless both are the same assignment; returns the number of foreground anchors."""
    for i, (matched, classes, valid, regression) in enumerate(theirs):
        foreground = matched >= 0
        same = {
            "matched boxes (or -1 / -2)": torch.equal(ours.matches[i], matched),
            "ignored anchors": torch.equal(ours.labels[i] != IGNORE, valid),
            "classes": torch.equal(classes.sum(1), foreground.float())
            and torch.equal(classes[foreground].argmax(1), ours.labels[i][foreground]),
            "box targets": torch.allclose(ours.box_targets[i][foreground], regression, rtol=1e-5, atol=1e-6),
        }
        if not all(same.values()):
            raise RuntimeError(f"fl_lab and torchvision assign image {i} differently: "
                               f"{', '.join(k for k, ok in same.items() if not ok)} differ")
    return ours.num_foreground


def interleaved_ms(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                   warmup: int = 2) -> dict[str, float]:
    """Median ms of each function over ``repeats`` runs after ``warmup`` calls, the runs interleaved
    (one of each in turn) so that load changes on a shared machine hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, device, repeats=1, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: Optional[list[str]] = None) -> dict:
    """Check, time, print the table and write the JSON; returns the payload ("rows", "table", …)."""
    args = bench_parser("assign", __doc__, "2 images of 128 px with 0–5 objects (for tests)").parse_args(argv)
    device = device_from(args.device)

    images, side, most = QUICK_CASE if args.quick else CASE
    anchors = AnchorGenerator().gen((side, side), device=device)
    boxes, labels = make_targets(images, side, most, device)
    tv_assign = TorchvisionAssign()
    num_foreground = check_same(fl_lab_assign(anchors, boxes, labels), tv_assign(anchors, boxes, labels))
    ms = interleaved_ms({"fl_lab": lambda: fl_lab_assign(anchors, boxes, labels),
                         "torchvision": lambda: tv_assign(anchors, boxes, labels)}, device, args.repeats)

    case = f"{images} × {side}², 0–{most} boxes"
    row = {"case": case, "images": images, "image_size": [side, side], "boxes": sum(len(b) for b in boxes),
           "anchors": len(anchors), "classes": NUM_CLASSES, "foreground_anchors": num_foreground,
           "fl_lab_ms": ms["fl_lab"], "torchvision_ms": ms["torchvision"],
           "speedup": ratio(ms["fl_lab"], ms["torchvision"])}
    columns = ["case", "anchors", "boxes", "fl_lab_ms", "torchvision_ms", "speedup"]
    table = format_table(["case", "anchors", "boxes", "fl_lab ms", "torchvision ms", "speed-up"],
                         [[row[c] for c in columns]])
    table += (f"\nmedian of {args.repeats} interleaved runs; speed-up = torchvision / fl_lab time; "
              "anchor generation in neither")
    print(f"target assignment, K = {NUM_CLASSES} — {machine(device)}\n{table}")
    payload = {"benchmark": "assign", "device": device.type, "quick": args.quick, "repeats": args.repeats,
               "anchor_generation": "excluded from both timings", "rows": [row], "table": table}
    write_json("assign", device, payload, results=args.results)
    return payload


if __name__ == "__main__":
    main()
