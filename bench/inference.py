"""Inference: fl_lab's ``RetinaNet`` against torchvision's, post-processing alone and end to end.

A batch of 8 images at 640×640, K = 80 classes, randomly initialised models (seed 0).

**Post-processing** — fl_lab's ``RetinaNet.detect(output, image_sizes)`` against torchvision's
``RetinaNet.postprocess_detections`` (through ``fl_lab.torchvision_detectors.TorchvisionDetector.detect``,
which splits the outputs and anchors per level as torchvision
expects them) on the *same* head outputs and anchors: those of ``fl_lab.model.RetinaNet(80,
backbone="resnet50")`` (prior 0.01) on random images. Both use score threshold 0.05, 1000
candidates per level, class-aware NMS at IoU 0.5 and 100 detections per image. A randomly
initialised model scores every anchor ≈ 0.01 (logits -4.6 ± 0.35), below the threshold,
which would leave nothing to post-process; so Gaussian noise (σ = 0.35, seeded) is added to
its class logits, putting about 3,000 of the 6.1 million scores of each image above 0.05
(the table's note gives the count, and the candidates left after the per-level top-k) — a
trained model's regime in numbers, though its boxes would cluster on objects where these
are scattered. The two libraries order the threshold and top-k differently
(fl_lab: top-k of the scores above the threshold; torchvision: threshold, then top-k; the
same set), so before timing the detections are checked to agree: the same number per image,
the same (class, box) pairs and scores equal up to float rounding. The script stops if not.

**End to end** — fl_lab's ``model.detect(model(images))`` against torchvision's
``retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)`` in eval mode
(its defaults, min/max size set to 640 so that it does not upscale to 800 px, and 100
detections per image). torchvision's time includes its ``GeneralizedRCNNTransform``
(normalisation, a resize that is the identity at 640 px, batching) and the rescaling of
boxes; fl_lab's model takes the normalised batch directly. The models differ by design:
fl_lab computes P6 from C5 (the paper), torchvision from P5, and K = 80 against 91. No
logits are perturbed here, so few boxes pass the threshold and the time is the networks'.
The detections are not compared (different weights).

Times are medians of ``--repeats`` runs after warm-up, fl_lab and torchvision interleaved.
``--quick``: 2 images of 128 px, ResNet-18 models, logit noise σ 0.5.

    python bench/inference.py [--device auto|cpu|cuda] [--repeats 7] [--quick] [--results bench/results]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torchvision.models.detection import retinanet_resnet50_fpn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from assign import interleaved_ms
from common import bench_parser, device_from, format_table, machine, ratio, write_json

from fl_lab.model import RetinaNet, RetinaNetOutput
from fl_lab.torchvision_detectors import TorchvisionDetector, build_torchvision_detector

NUM_CLASSES = 80
TV_NUM_CLASSES = 91  # torchvision's COCO head
#: images, image side, backbone, σ of the noise added to the class logits for post-processing
CASE = (8, 640, "resnet50", 0.35)
QUICK_CASE = (2, 128, "resnet18", 0.5)  # ~100 scores per image above the threshold
SETTINGS = {"score_thresh": 0.05, "topk": 1000, "nms_thresh": 0.5, "max_detections": 100}


def build_models(side: int, backbone: str, device: torch.device) -> tuple[RetinaNet, torch.nn.Module]:
    """fl_lab's RetinaNet (K = 80) and torchvision's (K = 91), both randomly initialised, in eval mode.

    torchvision's transform keeps ``side``-pixel images at their size and normalises them itself.
    """
    torch.manual_seed(0)
    fl_model = RetinaNet(NUM_CLASSES, backbone=backbone)
    if backbone == "resnet50":
        tv_model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=TV_NUM_CLASSES,
                                          min_size=side, max_size=side)
    else:  # the same RetinaNet over a ResNet-18 FPN (torchvision has no builder for it)
        tv_model = build_torchvision_detector("retinanet", TV_NUM_CLASSES, side, backbone)
        # torchvision's default transform (it normalises with ImageNet's statistics), as the ResNet-50 builder has
        tv_model.transform = GeneralizedRCNNTransform(side, side, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tv_model.detections_per_img = SETTINGS["max_detections"]
    return fl_model.to(device).eval(), tv_model.to(device).eval()


@torch.no_grad()
def noisy_head_outputs(model: RetinaNet, images: Tensor, sigma: float) -> RetinaNetOutput:
    """The model's outputs with N(0, sigma²) added to the class logits (seeded): scores above
    0.05 instead of none."""
    output = model(images)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(output.cls_logits.shape, generator=g).to(images.device)
    return output._replace(cls_logits=output.cls_logits + sigma * noise)


def candidate_counts(output: RetinaNetOutput) -> tuple[float, float]:
    """Mean per image of the scores above the threshold, and of those left after the per-level top-k."""
    above = torch.stack([(level.sigmoid() > SETTINGS["score_thresh"]).sum((1, 2))
                         for level in output.cls_logits.split(output.anchors_per_level, dim=1)])  # (levels, B)
    return above.sum(0).float().mean().item(), above.clamp(max=SETTINGS["topk"]).sum(0).float().mean().item()


def check_same_detections(ours: list[dict[str, Tensor]], theirs: list[dict[str, Tensor]]) -> None:
    """Raise unless each image has the same detections: count, (class, box) pairs, scores to float rounding.

    Compared in (class, box) order: detections of equal score may come in either order.
    """
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if len(a["scores"]) != len(b["scores"]):
            raise RuntimeError(f"image {i}: fl_lab has {len(a['scores'])} detections, torchvision {len(b['scores'])}")
        canonical = [sorted(zip(d["labels"].tolist(), d["boxes"].tolist(), d["scores"].tolist(), strict=True))
                     for d in (a, b)]
        same_pairs = [c[:2] for c in canonical[0]] == [c[:2] for c in canonical[1]]
        scores = [torch.tensor([c[2] for c in side]) for side in canonical]
        if not (same_pairs and torch.allclose(scores[0], scores[1], rtol=1e-5, atol=0)):
            raise RuntimeError(f"image {i}: fl_lab and torchvision detect different boxes or scores")


def main(argv: Optional[list[str]] = None) -> dict:
    """Check, time, print the table and write the JSON; returns the payload ("rows", "table", …)."""
    args = bench_parser("inference", __doc__, "2 images of 128 px, ResNet-18 (for tests)").parse_args(argv)
    device = device_from(args.device)

    images_n, side, backbone, sigma = QUICK_CASE if args.quick else CASE
    fl_model, tv_model = build_models(side, backbone, device)
    images = torch.randn(images_n, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    sizes = [(side, side)] * images_n

    # (a) post-processing of the same outputs
    output = noisy_head_outputs(fl_model, images, sigma)
    adapter = TorchvisionDetector(tv_model)
    check_same_detections(fl_model.detect(output, sizes, **SETTINGS), adapter.detect(output, sizes, **SETTINGS))
    post = interleaved_ms({"fl_lab": lambda: fl_model.detect(output, sizes, **SETTINGS),
                           "torchvision": lambda: adapter.detect(output, sizes, **SETTINGS)}, device, args.repeats)
    above, candidates = candidate_counts(output)

    # (b) end to end
    with torch.no_grad():
        e2e = interleaved_ms({"fl_lab": lambda: fl_model.detect(fl_model(images), sizes, **SETTINGS),
                              "torchvision": lambda: tv_model(list(images))}, device, args.repeats, warmup=1)

    shape = f"{images_n} × {side}², K {NUM_CLASSES}"
    rows = [
        {"case": f"post-processing, {shape}", "fl_lab_ms": post["fl_lab"], "torchvision_ms": post["torchvision"],
         "speedup": ratio(post["fl_lab"], post["torchvision"]), "scores_above_thresh_per_image": above,
         "candidates_per_image": candidates},
        {"case": f"forward + detect, {images_n} × {side}², {backbone}", "fl_lab_ms": e2e["fl_lab"],
         "torchvision_ms": e2e["torchvision"], "speedup": ratio(e2e["fl_lab"], e2e["torchvision"])},
    ]
    for row in rows:
        row.update(images=images_n, image_size=[side, side], backbone=backbone, **SETTINGS)
    table = format_table(["case", "fl_lab ms", "torchvision ms", "speed-up"],
                         [[r["case"], r["fl_lab_ms"], r["torchvision_ms"], r["speedup"]] for r in rows])
    table += (f"\nmedian of {args.repeats} interleaved runs; speed-up = torchvision / fl_lab time; post-processing "
              f"on the same outputs, {above:,.0f} scores > {SETTINGS['score_thresh']} per image (logit noise "
              f"σ {sigma}), {candidates:,.0f} after the per-level top-k; forward + detect: "
              "torchvision's includes its transform, its K is 91")
    print(f"inference — {machine(device)}\n{table}")
    payload = {"benchmark": "inference", "device": device.type, "quick": args.quick, "repeats": args.repeats,
               "logit_noise": sigma, "rows": rows, "table": table}
    write_json("inference", device, payload, results=args.results)
    return payload


if __name__ == "__main__":
    main()
