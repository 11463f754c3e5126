"""One-stage vs two-stage (the paper's Figure 2 at small scale): RetinaNet against torchvision's
Faster R-CNN and SSD on one budget, over input scales, and a fair inference timer.

The paper sets RetinaNet (one stage, focal loss) against two families (§1, §2):

* **two-stage** — Faster R-CNN with FPN: a region proposal network, then a second stage that
  classifies a *sampled* minibatch of proposals with a fixed 1:3 foreground : background
  ratio (torchvision: ``box_batch_size_per_image=512``, ``box_positive_fraction=0.25``);
* **one-stage with hard negative mining** — SSD, which keeps the hardest negatives at 3:1
  (torchvision's ``SSD.compute_loss``, ``neg_to_pos_ratio=3``): the heuristic the focal loss
  replaces.

torchvision's detectors train and are scored through
:class:`fl_lab.torchvision_detectors.TorchvisionDetector`. SSD trains from scratch, Faster
R-CNN from scratch or from the same backbone weights as RetinaNet (``Config.backbone_weights``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .analysis import Claim, compare_seeds
from .data import collate
from .experiment import (
    RECORD,
    Arm,
    ArmResult,
    command_line,
    experiment_parser,
    parse_seeds,
    read_results,
    run_arm,
    run_or_exit,
    write_results,
)
from .inference_timing import ROUNDS, inference_ms_per_image, side_by_side_ms
from .torch_utils import resolve_device
from .torchvision_detectors import DETECTORS, TorchvisionDetector, build_torchvision_detector, input_side
from .train import PRESETS, Config, backbone_weights_file, datasets, load_checkpoint, load_run

__all__ = ["PAPER", "SSD_NAMES", "TIMING", "check_orderings", "compare", "compare_base", "detector_arms",
           "figure2_points", "format_table", "image_size", "load_results", "ms_per_image", "scale_claims"]


# ------------------------------------------------------------------------------ the comparison
#: What the paper reports for each design (../shared/PAPER.md): COCO AP, and ms per image where
#: it gives one (Table 1e: RetinaNet R50 on an Nvidia M40, test-dev).
PAPER = {
    "RetinaNet (FL)": "R50-FPN 600 px: 34.3 AP in 98 ms (Table 1e); R101-FPN: 39.1 AP (Table 2)",
    "RetinaNet (α-CE)": "R50-FPN 600 px, α-balanced CE α=.75: 31.1 AP (Table 1a, minival)",
    "Faster R-CNN": "FPN Faster R-CNN, R101: 36.2 AP (Table 2)",
}
#: Each SSD by what it is (tables, figures): neither is the paper's SSD513 on ResNet-101.
SSD_NAMES = {"ssdlite": "SSDlite320-MobileNetV3", "ssd300": "SSD300-VGG16"}
PAPER.update(dict.fromkeys(SSD_NAMES.values(), "the paper's SSD513, R101: 31.2 AP (Table 2)"))
#: α-CE as the lessons' regime tuned it: α .5 (at lr 0.01) was its best on exploration seeds 0–2
#: (``results/confirm``), as FL's α .25 was; the paper's best α-CE on COCO is α .75 (Table 1a).
ALPHA_CE = dict(loss_fn="balanced_ce", alpha=0.5)
DETECTORS_ONE_STAGE_FL = "one-stage, focal loss (γ 2, α .25) over all anchors"
#: Table 1e's speed/accuracy points: (image size, AP, ms per image) of RetinaNet R50 and R101.
PAPER_SPEED = {
    "R50": [(400, 30.5, 64), (500, 32.5, 72), (600, 34.3, 98), (700, 35.1, 121), (800, 35.7, 153)],
    "R101": [(400, 31.9, 81), (500, 34.4, 90), (600, 36.0, 122), (700, 37.1, 154), (800, 37.8, 198)],
}


def image_size(entry: ArmResult) -> int:
    """The input size (px) a detector of the comparison trained and was timed at: its images' side, or the
    side they were resized to (``input_size``; records made before it existed have none; an SSD: its
    native side)."""
    config = entry.runs[0].config
    return input_side(entry.arm.detector, config.get("input_size") or config["image_size"])


def ms_per_image(entry: ArmResult) -> float:
    """The inference time :func:`compare` measured for a detector (its first seed's model)."""
    return entry.measured["ms_per_image"]


def compare_base(gpu: bool, fast: bool, live: bool = False) -> Config:
    """The shared budget: data, schedule, batch, backbone of every detector (seeds: :func:`compare`'s).

    Fast mode: 4 iterations of 2 Shapes images at 128 px, ResNet-18, 4 validation images —
    enough to run every design end to end (Faster R-CNN's 512 RoIs per image make it many
    times slower per step than RetinaNet on a CPU), not to rank them. It trains from scratch,
    so that tests never pretrain a backbone.
    GPU: 1000 iterations of 16 images at 256 px, ResNet-50, bf16, fine-tuned from the ``gpu``
    preset's backbone. CPU full mode: the lessons' ``cpu-pretrained`` preset scored on 500
    validation images, as ``results/confirm`` is (RetinaNet (FL) at 128 px is its FL arm's
    configuration); with ``live`` (lesson 07's own run) 100 of its 500 iterations, with the
    warm-up scaled alike, so that every design trains and is timed in minutes. RetinaNet and
    Faster R-CNN fine-tune the same backbone; SSD trains its own from scratch.
    """
    if gpu:
        return Config(**{**PRESETS["gpu"], "image_size": 256, "steps": 1000, "warmup": 100, "train_images": 8000,
                         "val_images": 250, "log_every": 10, "checkpoint_every": 0})
    config = Config(**{**PRESETS["cpu-pretrained"], "val_images": 500, "log_every": 10, "checkpoint_every": 0})
    if fast:
        return dataclasses.replace(config, steps=4, warmup=1, batch_size=2, train_images=8, val_images=4,
                                   backbone_weights=None, log_every=1)
    return dataclasses.replace(config, steps=100, warmup=10) if live else config


def detector_arms(base: Config, sizes: Sequence[int] = (), ssd: str = "ssdlite") -> list[Arm]:
    """The comparison's arms: RetinaNet with FL and Faster R-CNN (``base.backbone``) each on ``base``'s
    images and on the same images resized to each of ``sizes`` (``input_size``: the paper's Figure 2,
    one curve per detector through its input scales), RetinaNet with α-balanced CE and SSD (``ssd``,
    its own backbone) on ``base``'s images."""
    fl = dict(loss_fn="focal", gamma=2.0, alpha=0.25)
    scales = [None, *dict.fromkeys(s for s in sizes if s != base.image_size)]

    def at(size: Optional[int]) -> dict:
        return {} if size is None else {"input_size": size}

    def px(size: Optional[int]) -> int:
        return base.image_size if size is None else size

    return [
        *(Arm("RetinaNet (FL)", DETECTORS_ONE_STAGE_FL, dict(fl, **at(size)), folder=f"retinanet_focal_{px(size)}px")
          for size in scales),
        Arm("RetinaNet (α-CE)", "one-stage, α-balanced CE (α .5), no focusing",
            dict(ALPHA_CE), folder=f"retinanet_balanced_ce_{base.image_size}px"),
        *(Arm("Faster R-CNN", DETECTORS["faster_rcnn"], at(size), detector="faster_rcnn",
              folder=f"faster_rcnn_{px(size)}px") for size in scales),
        Arm(SSD_NAMES[ssd], DETECTORS[ssd], dict(backbone_weights=None), detector=ssd,
            folder=f"ssd_{ssd}_{base.image_size}px"),
    ]


def _torchvision_model(config: Config, num_classes: int, kind: str, load_weights: bool = True) -> nn.Module:
    """torchvision's ``kind`` as ``config`` trains it, initialised from ``config.seed`` (as
    :func:`fl_lab.train.build_model` does RetinaNet); ``load_weights=False``: the architecture only."""
    weights = backbone_weights_file(config) if load_weights else None
    torch.manual_seed(config.seed)
    return TorchvisionDetector(build_torchvision_detector(kind, num_classes, config.input_size or config.image_size,
                                                          config.backbone,
                                                          config.fpn_channels, weights,
                                                          frozen_bn=config.backbone_weights is not None), config.amp)


def _trained(config: Config, kind: Optional[str], device: torch.device) -> nn.Module:
    """The model a finished run saved in ``config.out/last.pt``, in eval mode on ``device``."""
    if kind is None:
        return load_run(config.out, device)[0]
    _, val_set = datasets(config)
    model = _torchvision_model(config, val_set.num_classes, kind, load_weights=False)
    model.load_state_dict(load_checkpoint(Path(config.out) / "last.pt", map_location=device)["model"])
    return model.to(device).eval()


def compare(
    base: Config,
    out: Union[str, Path],
    sizes: Sequence[int] = (),
    ssd: str = "ssdlite",
    seeds: Sequence[int] = (0,),
    timing_batch: int = 8,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
) -> list[ArmResult]:
    """Train and evaluate every design on ``base``'s data and budget over ``seeds``; time each one's inference.

    The arms of :func:`detector_arms` (``sizes``: the paper's speed/accuracy curve; ``ssd``:
    "ssdlite" or "ssd300"), each trained by :func:`fl_lab.experiment.run_arm` in a folder under
    ``out`` (finished runs are read back). ``measured["ms_per_image"]``: :func:`inference_ms_per_image`
    of the first seed's model on ``timing_batch`` validation images, same device for all. Each is
    timed as soon as it is trained and the time kept beside its run (:data:`TIMING`), so that a
    comparison too long for one sitting continues elsewhere from its runs' records
    (``tools/run_records.py``), without their weights; then every model whose weights are here is
    timed again, all side by side at the end (:func:`side_by_side_ms`; ``measured["side_by_side"]``).
    Time it with nothing else running.
    """
    device = resolve_device(device)
    base = dataclasses.replace(base, device=str(device), evaluate=True)
    entries, firsts = [], []
    for arm in tqdm(detector_arms(base, sizes, ssd), desc="detectors", disable=not progress):
        build = None if arm.detector is None else partial(_torchvision_model, kind=arm.detector)
        (first,) = run_arm(arm, base, out, seeds[:1], progress=progress, build=build).runs
        firsts.append(dataclasses.replace(arm.config(base, out), seed=first.seed, out=first.out))
        _timed(firsts[-1], arm.detector, device, timing_batch)  # kept now: a study continued elsewhere has it
        entries.append(run_arm(arm, base, out, seeds, progress=progress, build=build))
    together = _retime_side_by_side(entries, firsts, device, timing_batch)
    for entry, first in zip(entries, firsts, strict=True):
        saved = json.loads((Path(first.out) / TIMING).read_text())
        entry.measured.update(ms_per_image=saved["ms_per_image"], side_by_side=first.out in together)
    return entries


#: The file beside a run's ``run.json`` holding its model's inference time (:func:`compare`).
TIMING = "timing.json"


def _timed(config: Config, kind: Optional[str], device: torch.device, timing_batch: int) -> float:
    """Milliseconds per image of the model of the finished run in ``config.out``: read from its
    :data:`TIMING` file when that file was measured on this run (the sha256 of its ``run.json``: a run
    trained again in the same folder, e.g. lesson 07's fast mode, then full, is timed again), else
    measured now on ``timing_batch`` validation images and written there."""
    path = Path(config.out) / TIMING
    run = hashlib.sha256((Path(config.out) / RECORD).read_bytes()).hexdigest()
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("run") == run:
        return saved["ms_per_image"]
    if not (Path(config.out) / "last.pt").is_file():
        raise FileNotFoundError(f"{config.out} holds neither a {TIMING} of its run nor the weights (last.pt) to "
                                "time; remove its run.json to train it again")
    model, images, sizes = _timing_input(config, kind, device, timing_batch)
    ms = inference_ms_per_image(model, images, sizes)
    _keep_time(config, ms, len(images), device, side_by_side=False)
    return ms


def _timing_input(config: Config, kind: Optional[str], device: torch.device,
                  timing_batch: int) -> tuple[nn.Module, Tensor, list[tuple[int, int]]]:
    """The trained model of the run in ``config.out`` and the first ``timing_batch`` validation images
    it is timed on: (model, images (B, 3, H, W), their sizes)."""
    _, val_set = datasets(config)
    batch = collate([val_set[i] for i in range(min(timing_batch, len(val_set)))]).to(device)
    return _trained(config, kind, device), batch.images, batch.image_sizes


def _keep_time(config: Config, ms: float, images: int, device: torch.device, side_by_side: bool) -> None:
    """Write a run's inference time to its :data:`TIMING` file, tied to its ``run.json`` (sha256)."""
    run = hashlib.sha256((Path(config.out) / RECORD).read_bytes()).hexdigest()
    (Path(config.out) / TIMING).write_text(json.dumps({"ms_per_image": ms, "images": images, "device": str(device),
                                                       "torch": torch.__version__, "run": run,
                                                       "side_by_side": side_by_side}))


def _retime_side_by_side(entries: Sequence[ArmResult], firsts: Sequence[Config], device: torch.device,
                         timing_batch: int) -> set[str]:
    """Time again, side by side (:func:`side_by_side_ms`), every entry whose first-seed weights are here,
    and keep those times (:data:`TIMING`): each call measures the comparison's speeds in one sitting, in
    turns (so they are re-measured whenever it runs, also when every run is read back). An entry
    without weights (continued elsewhere from its records) keeps the time it was given before. The
    folders of the runs timed now."""
    here = [(e, c) for e, c in zip(entries, firsts, strict=True) if (Path(c.out) / "last.pt").is_file()]
    batches = [_timing_input(config, entry.arm.detector, device, timing_batch) for entry, config in here]
    for (_, config), (_, images, _), ms in zip(here, batches, side_by_side_ms(batches), strict=True):
        _keep_time(config, ms, len(images), device, side_by_side=True)
    return {config.out for _, config in here}


def _timed_how(entries: Sequence[ArmResult]) -> str:
    together = [e for e in entries if e.measured.get("side_by_side")]
    if len(together) == len(entries):
        return f"inference: each detector's first-seed model, all timed side by side in turns ({ROUNDS} rounds, median)"
    return ("inference: each detector's first-seed model timed earlier (its weights are not here)"
            + (f"; {len(together)} of them timed again now, side by side" if together else ""))


def figure2_points(entries: Sequence[ArmResult]) -> list[dict]:
    """The plain data :func:`fl_lab.plots.figure2` draws: name, image size, AP per seed, ms per image."""
    return [{"name": e.name, "image_size": image_size(e), "ap": list(e.stats().values), "ms": ms_per_image(e)}
            for e in entries]


def format_table(entries: Sequence[ArmResult]) -> str:
    """Our AP / AP50 (×100, mean ± std over seeds) and ms per image beside what the paper reports for each design."""
    rows = [f"{'detector':<26}{'px':>5}{'AP':>18}{'AP50':>18}{'ms/img':>9}   paper", "-" * 114]
    for e in entries:
        rows.append(f"{e.name:<26}{image_size(e):>5}{e.stats('AP').format():>18}{e.stats('AP50').format():>18}"
                    f"{ms_per_image(e):>9.1f}   {PAPER[e.name]}")
    return "\n".join(rows)


def check_orderings(entries: Sequence[ArmResult]) -> list[Claim]:
    """The paper's Figure 2 / Table 2 conclusions, tested on these entries.

    Accuracy claims are judged seed by seed (:func:`fl_lab.analysis.compare_seeds`: *holds* when
    the 95 % t interval of the paired differences lies above 0, *not tested* with one seed);
    the speed claim is one measurement (a median of timed calls). Compares the runs at the
    shared base size: the first entry of each name.
    """
    first = {}
    for e in entries:
        first.setdefault("SSD" if e.arm.detector in SSD_NAMES else e.name, e)
    fl, ce, frcnn, ssd = (first[n] for n in ("RetinaNet (FL)", "RetinaNet (α-CE)", "Faster R-CNN", "SSD"))
    return [
        compare_seeds("RetinaNet with FL beats RetinaNet with α-balanced CE (Table 1)", fl.stats(), ce.stats()),
        compare_seeds("RetinaNet with FL beats the two-stage Faster R-CNN (Table 2)", fl.stats(), frcnn.stats()),
        compare_seeds("RetinaNet with FL beats SSD's hard negative mining (Table 2)", fl.stats(), ssd.stats()),
        Claim.check("RetinaNet is faster than Faster R-CNN at inference (Figure 2)",
                    ms_per_image(fl) < ms_per_image(frcnn),
                    f"{ms_per_image(fl):.1f} vs {ms_per_image(frcnn):.1f} ms per image"),
    ]


def scale_claims(entries: Sequence[ArmResult]) -> list[Claim]:
    """Figure 2's two curves compared at their other sizes: at each input size besides the base one
    (:func:`check_orderings` compares there) that both RetinaNet (FL) and Faster R-CNN trained at,
    "RetinaNet is more accurate" judged seed by seed and "RetinaNet is faster" (one measurement)."""
    at: dict[int, dict[str, ArmResult]] = {}
    for e in entries:
        if e.name in ("RetinaNet (FL)", "Faster R-CNN"):
            at.setdefault(image_size(e), {})[e.name] = e
    base = next((image_size(e) for e in entries if e.name == "RetinaNet (FL)"), None)  # its first entry
    claims = []
    for size in sorted(s for s in at if s != base and len(at[s]) == 2):
        fl, frcnn = at[size]["RetinaNet (FL)"], at[size]["Faster R-CNN"]
        fast, slow = ms_per_image(fl), ms_per_image(frcnn)
        claims += [compare_seeds(f"at {size} px, RetinaNet with FL beats Faster R-CNN", fl.stats(), frcnn.stats()),
                   Claim.check(f"at {size} px, RetinaNet is faster than Faster R-CNN", fast < slow,
                               f"{fast:.1f} vs {slow:.1f} ms per image ({slow / fast:.1f}×)")]
    return claims


def load_results(path: str | Path) -> list[ArmResult]:
    """The entries of a ``compare.json`` written by ``python -m fl_lab.compare --results`` (what lesson 07 reads).
    An SSD is named what it is (:data:`SSD_NAMES`), also in records made before 2026-12-07 that call it "SSD"."""
    entries = [ArmResult.from_json(e) for e in read_results(path, "python -m fl_lab.compare")["entries"]]
    for e in entries:
        if e.arm.detector in SSD_NAMES:
            e.arm = dataclasses.replace(e.arm, name=SSD_NAMES[e.arm.detector])
    return entries


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fl_lab.compare``: train lesson 07's detectors over seeds, print the table and the orderings.

    With ``--results DIR`` also writes ``compare.txt``, ``compare.json`` and ``compare.png`` there.
    Finished runs are read back; each detector's first-seed model is timed when trained and again,
    side by side with the others, at the end (so run it undisturbed).
    """
    from . import plots
    from .analysis import format_claims
    from .fast_mode import fast_mode

    parser = experiment_parser("python -m fl_lab.compare", main.__doc__, "runs/compare", seeds="0,1,2; with --fast: 0")
    parser.add_argument("--fast", action="store_true", default=fast_mode(),
                        help="fast mode's tiny runs (default: on when FL_LAB_FAST is set)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: the GPU budget when CUDA is present, else the CPU one")
    parser.add_argument("--sizes", default="", help="comma-separated extra input sizes for RetinaNet (FL) and "
                        "Faster R-CNN, e.g. 96,192: the paper's speed/accuracy curve (default: none)")
    parser.add_argument("--ssd", default=None, choices=("ssdlite", "ssd300"),
                        help="which SSD (default: ssdlite on a CPU, ssd300 on a GPU)")
    args = parser.parse_args(argv)
    seeds = parse_seeds(parser, args.seeds, (0,) if args.fast else (0, 1, 2))
    try:
        sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else ()
    except ValueError:
        parser.error(f"--sizes: expected comma-separated pixel sizes such as 96,192, got {args.sizes!r}")
    try:
        resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    cuda = args.device != "cpu" and torch.cuda.is_available()
    gpu = cuda and not args.fast  # fast mode's tiny budget on any device, as in lesson 07
    base = dataclasses.replace(compare_base(gpu=gpu, fast=args.fast), device="cuda" if cuda else "cpu",
                               out=str(args.out))
    ssd = args.ssd or ("ssd300" if gpu else "ssdlite")
    start = time.perf_counter()
    entries = run_or_exit(parser, args.debug, lambda: compare(base, args.out, sizes, ssd, seeds, device=base.device))
    wall = time.perf_counter() - start
    device = torch.cuda.get_device_name() if cuda else "CPU"
    made = sum(run.seconds for e in entries for run in e.runs)
    claims, curve = check_orderings(entries), scale_claims(entries)
    also = f" (RetinaNet and Faster R-CNN also at {', '.join(map(str, sizes))} px)" if sizes else ""
    text = "\n\n".join([f"4 detectors{also} × {len(seeds)} seeds of {base.steps} iterations on {device}: "
                         f"{made / 60:.0f} min of training and evaluation when the runs were made; "
                         + _timed_how(entries), format_table(entries),
                         format_claims(claims),
                         *([f"the two curves at their other sizes\n{format_claims(curve)}"] if curve else [])])
    print(text)
    if args.results:
        folder = Path(args.results)
        write_results(folder, "compare", command_line(parser, argv), text, {
            "device": device, "wall_s_this_call": wall, "base": dataclasses.asdict(base), "seeds": list(seeds),
            "entries": [e.to_json() for e in entries], "claims": [dataclasses.asdict(c) for c in [*claims, *curve]]})
        plots.figure2(figure2_points(entries), PAPER_SPEED, title=f"AP against inference time ({device}, "
                      f"{base.steps} iterations, {len(seeds)} seeds)").savefig(folder / "compare.png", dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
