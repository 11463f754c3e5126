"""fl_lab.compare: torchvision's detectors behind fl_lab's interface, trained by fl_lab's loop,
scored by fl_lab's evaluation; and the inference timer."""

import contextlib
import io
import math
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader

from fl_lab.compare import (
    DETECTORS,
    ImagesOnly,
    TorchvisionDetector,
    build_torchvision_detector,
    inference_ms_per_image,
)
from fl_lab.data import Shapes, collate
from fl_lab.evaluate import evaluate, predict
from fl_lab.model import RetinaNet
from fl_lab.train import TrainSettings, train

torch.set_grad_enabled(True)
SIZE, K = 128, 3


@pytest.fixture(scope="module")
def data():
    return Shapes(8, image_size=SIZE, num_classes=K, seed=0)


@pytest.mark.parametrize("kind", ["faster_rcnn", "ssdlite"])
def test_detector_trains_with_fl_lab_loop_and_is_scored_by_fl_lab_evaluation(kind):
    torch.manual_seed(0)
    data = Shapes(4, image_size=SIZE, num_classes=K, seed=0)
    detector = TorchvisionDetector(build_torchvision_detector(kind, K, SIZE))
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    history = train(detector, loader, TrainSettings(steps=2, lr=0.001, warmup=0), "cpu", progress=False)
    assert len(history) == 2 and all(math.isfinite(row["total"]) and row["cls"] > 0 for row in history)
    # The documented detection format, in fl_lab's label space and the image's pixels.
    detections = predict(detector, data, batch_size=4, progress=False, score_thresh=0.0)
    assert [d["image_id"] for d in detections] == [int(data[i][1]["image_id"]) for i in range(len(data))]
    for det in detections:
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape == (len(det["scores"]), 4)
        assert det["labels"].dtype == torch.int64 and len(det["labels"]) == len(det["scores"])
        if len(det["labels"]):
            assert det["labels"].min() >= 0 and det["labels"].max() < K  # torchvision's background removed
            assert det["boxes"].min() >= 0 and det["boxes"].max() <= SIZE  # clipped to the image
            assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
    metrics = evaluate(detector, data, batch_size=4, progress=False)
    detections = predict(detector, data, batch_size=4, progress=False)  # evaluate's thresholds: the defaults
    assert metrics["AP"] == pytest.approx(pycocotools_ap(data, detections), abs=1e-12)


def pycocotools_ap(dataset, detections) -> float:
    """COCO AP (0.5:0.95) of ``detections`` on ``dataset``, straight from pycocotools (not fl_lab.evaluate)."""
    images, truth = [], []
    for image, target in (dataset[i] for i in range(len(dataset))):
        images.append({"id": int(target["image_id"]), "height": image.shape[1], "width": image.shape[2]})
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            truth.append({"id": len(truth) + 1, "image_id": int(target["image_id"]), "category_id": label + 1,
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    found = [{"image_id": d["image_id"], "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
             for d in detections for (x1, y1, x2, y2), label, score in
             zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist(), strict=True)]
    if not found:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": truth, "categories": [{"id": k + 1} for k in range(K)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(found), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_detections_equal_torchvision_own_output_shifted(data):
    torch.manual_seed(0)
    tv = build_torchvision_detector("faster_rcnn", K, SIZE).eval()
    detector = TorchvisionDetector(tv)
    batch = collate([data[0], data[1]])
    ours = detector.detect(detector(batch.images), batch.image_sizes, score_thresh=0.0)
    with torch.no_grad():
        theirs = tv(list(batch.images))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a["labels"], b["labels"] - 1)
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"], b["boxes"].clamp(0, SIZE))


def test_loss_reports_fl_lab_keys(data):
    torch.manual_seed(0)
    detector = TorchvisionDetector(build_torchvision_detector("ssdlite", K, SIZE))
    batch = collate([data[0], data[1]])
    losses = detector.loss(detector(batch.images), batch.targets)
    assert set(losses) == {"cls", "box", "total", "num_foreground"}
    torch.testing.assert_close(losses["total"], losses["cls"] + losses["box"])
    assert int(losses["num_foreground"]) == sum(len(t["boxes"]) for t in batch.targets)
    losses["total"].backward()  # the gradient reaches torchvision's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in detector.parameters())


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A ResNet-18 state dict standing in for the Shapes-pretrained backbone (random, seeded)."""
    import torchvision

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_faster_rcnn_fine_tunes_the_backbone_retinanet_fine_tunes(resnet18_file):
    from torchvision.ops.misc import FrozenBatchNorm2d

    saved = torch.load(resnet18_file, weights_only=True)
    tv = build_torchvision_detector("faster_rcnn", K, SIZE, "resnet18", 64, backbone_weights=resnet18_file)
    body = tv.backbone.body
    torch.testing.assert_close(body.conv1.weight, saved["conv1.weight"])
    torch.testing.assert_close(body.layer3[1].bn2.running_var, saved["layer3.1.bn2.running_var"])
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in tv.backbone.modules())
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    # the paper's fine-tuning: stem and res2 fixed, the rest trains -- exactly as in fl_lab's RetinaNet
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    retina = RetinaNet(K, "resnet18", fpn_channels=64, backbone_weights=resnet18_file)
    ours, theirs = retina.backbone.body.state_dict(), body.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value)
    # rebuilt for a checkpoint: frozen BatchNorm, no file read
    shell = build_torchvision_detector("faster_rcnn", K, SIZE, "resnet18", 64, frozen_bn=True)
    assert isinstance(shell.backbone.body.bn1, FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="ssdlite keeps its own backbone"):
        build_torchvision_detector("ssdlite", K, SIZE, backbone_weights=resnet18_file)


def test_builders_reject_bad_arguments():
    assert set(DETECTORS) == {"faster_rcnn", "ssd300", "ssdlite"}
    with pytest.raises(ValueError, match="kind must be one of"):
        build_torchvision_detector("yolo", 3, SIZE)
    with pytest.raises(ValueError, match="num_classes"):
        build_torchvision_detector("ssdlite", 0, SIZE)
    with pytest.raises(ValueError, match="amp"):
        TorchvisionDetector(torch.nn.Identity(), amp="int8")


class _Clocked(torch.nn.Module):
    """A fake detector whose n-th call takes ``durations[n]`` seconds on a fake clock."""

    def __init__(self, durations):
        super().__init__()
        self.durations, self.now, self.calls = list(durations), 0.0, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return ImagesOnly(images)

    def detect(self, output, image_sizes):
        assert not self.training  # timed in eval mode
        self.now += self.durations[self.calls]
        self.calls += 1
        return [{} for _ in image_sizes]


def test_inference_timer_excludes_warmup_and_takes_the_median():
    # two slow warm-up calls (10 s), then 0.2, 0.4, 0.3 s for a batch of 2 images
    model = _Clocked([10.0, 10.0, 0.2, 0.4, 0.3]).train()
    ms = inference_ms_per_image(model, torch.zeros(2, 3, 8, 8), repeats=3, warmup=2, clock=lambda: model.now)
    assert ms == pytest.approx(1e3 * 0.3 / 2)
    assert model.calls == 5 and model.training  # mode restored
    with pytest.raises(ValueError, match="repeats"):
        inference_ms_per_image(model, torch.zeros(1, 3, 8, 8), repeats=0)


def test_inference_timer_on_fl_lab_retinanet():
    model = RetinaNet(K, backbone="resnet18", fpn_channels=32, head_convs=1).train()
    detected = []
    real_detect = model.detect
    model.detect = lambda *a, **kw: detected.append(model.training) or real_detect(*a, **kw)
    ticks = iter(range(100))  # a clock that advances one second at each reading
    ms = inference_ms_per_image(model, torch.zeros(2, 3, SIZE, SIZE), repeats=3, warmup=1,
                                clock=lambda: float(next(ticks)))
    assert ms == 1e3 * 1.0 / 2  # each timed call spans one reading to the next; 2 images a batch
    assert detected == [False] * 4 and model.training  # 1 + 3 calls in eval mode, the mode restored


def test_orderings_are_judged_against_the_seeds_noise():
    from fl_lab.analysis import FAILS, HOLDS, NOT_TESTED, WITHIN_NOISE
    from fl_lab.compare import check_orderings
    from fl_lab.experiment import Arm, ArmResult, RunRecord

    def entry(name, aps, ms):
        return ArmResult(Arm(name), [RunRecord({"seed": i, "image_size": 96}, {"AP": a, "AP50": a}, None, {}, 1.0, "")
                                     for i, a in enumerate(aps)], {"ms_per_image": ms})

    entries = [entry("RetinaNet (FL)", [0.30, 0.31, 0.32], 5.0), entry("RetinaNet (α-CE)", [0.20, 0.21, 0.19], 5.0),
               entry("Faster R-CNN", [0.25, 0.40, 0.31], 9.0), entry("SSD", [0.40, 0.41, 0.42], 3.0)]
    assert [c.verdict for c in check_orderings(entries)] == [HOLDS, WITHIN_NOISE, FAILS, HOLDS]
    ties = [entry(n, [0.3, 0.3, 0.3], 1.0) for n in ("RetinaNet (FL)", "RetinaNet (α-CE)", "Faster R-CNN", "SSD")]
    assert [c.verdict for c in check_orderings(ties)] == [WITHIN_NOISE] * 3 + [FAILS]  # a tie is no win
    silent = [entry(n, [0.0, 0.0, 0.0], 1.0) for n in ("RetinaNet (FL)", "RetinaNet (α-CE)", "Faster R-CNN", "SSD")]
    assert [c.verdict for c in check_orderings(silent)][:3] == [NOT_TESTED] * 3  # nothing detected: nothing to rank


def test_compare_trains_scores_times_and_writes_what_lesson_07_reads(tmp_path, monkeypatch, capsys, resnet18_file):
    """The command line end to end: every design over two seeds, fine-tuned like the lessons' regime from
    one weights file, scored, timed, judged, written; then read back."""
    import dataclasses
    import hashlib
    import json

    from fl_lab import compare
    from fl_lab.plots import figure2

    fast, full = compare.compare_base(gpu=False, fast=True), compare.compare_base(gpu=False, fast=False)
    assert fast.backbone_weights is None and full.backbone_weights == "shapes"  # tests never pretrain
    assert dataclasses.replace(full, log_every=1, checkpoint_every=0) == full
    assert dataclasses.replace(full, steps=fast.steps, warmup=fast.warmup, batch_size=fast.batch_size,
                               train_images=fast.train_images, val_images=fast.val_images,
                               backbone_weights=None) == fast
    tiny = dataclasses.replace(fast, steps=2, warmup=1, batch_size=2, train_images=4, val_images=2, image_size=64,
                               backbone_weights=str(resnet18_file))
    monkeypatch.setattr(compare, "compare_base", lambda gpu, fast: tiny)
    args = ["--device", "cpu", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"), "--seeds", "0,1",
            "--sizes", "96"]
    assert compare.main(args) == 0
    printed = capsys.readouterr().out
    assert "4 detectors (RetinaNet and Faster R-CNN also at 96 px) × 2 seeds of 2 iterations on CPU" in printed
    assert "(n=2)" in printed
    saved = json.loads((tmp_path / "res" / "compare.json").read_text())
    assert saved["device"] == "CPU" and saved["seeds"] == [0, 1] and saved["base"]["steps"] == 2
    assert saved["base"]["device"] == "cpu" and saved["base"]["out"] == str(tmp_path / "runs")
    assert [(e["name"], e["runs"][0]["config"]["image_size"]) for e in saved["entries"]] == [
        ("RetinaNet (FL)", 64), ("RetinaNet (FL)", 96), ("RetinaNet (α-CE)", 64), ("Faster R-CNN", 64),
        ("Faster R-CNN", 96), ("SSD", 64)]  # Figure 2's curves: RetinaNet and Faster R-CNN at every scale
    entries = saved["entries"]
    assert [run["config"]["seed"] for run in entries[3]["runs"]] == [0, 1]
    assert entries[5]["group"] == compare.DETECTORS["ssdlite"] and entries[5]["detector"] == "ssdlite"  # the CPU's SSD
    # RetinaNet and Faster R-CNN fine-tune the same backbone; SSD trains its own from scratch
    assert [e["runs"][0]["config"]["backbone_weights"] for e in entries] == [str(resnet18_file)] * 5 + [None]
    # each record says what trained: torchvision's detectors with their own losses, whatever the config's loss_fn
    assert [(e["runs"][0]["model"], e["runs"][0]["loss"]) for e in entries] == [
        ("RetinaNet (resnet18)", "focal(gamma=2.0, alpha=0.25)"), ("RetinaNet (resnet18)",
                                                                     "focal(gamma=2.0, alpha=0.25)"),
        ("RetinaNet (resnet18)", "balanced_ce(alpha=0.75)"), ("faster_rcnn", "faster_rcnn's own"),
        ("faster_rcnn", "faster_rcnn's own"), ("ssdlite", "ssdlite's own")]
    digest = hashlib.sha256(resnet18_file.read_bytes()).hexdigest()
    assert [e["runs"][0]["weights_sha256"] for e in entries] == [digest] * 5 + [None]
    outs = [run["out"] for e in entries for run in e["runs"]]
    assert len(set(outs)) == len(outs) and all(Path(o, "metrics.json").is_file() for o in outs)  # a folder each
    assert all(e["measured"]["ms_per_image"] > 0 for e in entries) and len(saved["claims"]) == 4
    loaded = compare.load_results(tmp_path / "res" / "compare.json")
    table = compare.format_table(loaded)
    assert table in printed and all(compare.PAPER[e.name] in table for e in loaded)
    assert [c.verdict for c in compare.check_orderings(loaded)] == [c["verdict"] for c in saved["claims"]]
    assert (tmp_path / "res" / "compare.png").stat().st_size > 1000
    assert (tmp_path / "res" / "compare.txt").read_text().startswith("$ python -m fl_lab.compare --device cpu")
    fig = figure2(compare.figure2_points(loaded), compare.PAPER_SPEED, title="t")
    ours, paper = fig.axes
    assert ours.get_xlabel() and ours.get_ylabel() and ours.get_legend() is not None
    assert paper.get_legend() is not None and len(paper.lines) == 2  # the paper's R50 and R101 curves
    assert len(ours.containers) == 4  # one error-bar line per design; each detector's two sizes joined
    curves = {c.get_label(): len(c.lines[0].get_xdata()) for c in ours.containers}  # points on each detector's line
    assert curves == {"RetinaNet (FL)": 2, "RetinaNet (α-CE)": 1, "Faster R-CNN": 2, "SSD": 1}
    # a second call reads every run back instead of training it again, and times inference anew
    again = compare.compare(tiny, tmp_path / "runs", sizes=(96,), seeds=(0, 1), timing_batch=2,
                            progress=False, device="cpu")
    assert [r.seconds for e in again for r in e.runs] == [r["seconds"] for e in entries for r in e["runs"]]
    with pytest.raises(FileNotFoundError, match="python -m fl_lab.compare --results"):
        compare.load_results(tmp_path / "nothing.json")


@pytest.mark.parametrize("args, says", [(["--seeds", "0,one"], "--seeds: expected comma-separated integers"),
                                         (["--sizes", "96px"], "--sizes: expected comma-separated pixel sizes"),
                                         (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
                                         (["--ssd", "yolo"], "argument --ssd: invalid choice: 'yolo'")])
def test_command_line_says_what_is_wrong(args, says, capsys):
    from fl_lab import compare

    with pytest.raises(SystemExit) as exit_info:
        compare.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and says in err and "Traceback" not in err


def test_command_line_turns_a_user_error_into_one_line(tmp_path, capsys):
    from fl_lab import compare

    (tmp_path / "file").write_text("")
    for args, says in [(["--seeds", "0,0", "--out", str(tmp_path / "runs")], "seeds must be distinct"),
                       (["--out", str(tmp_path / "file" / "runs")], "Not a directory")]:  # --out under a file
        with pytest.raises(SystemExit) as exit_info:
            compare.main(["--fast", "--device", "cpu", *args])
        lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert exit_info.value.code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("python -m fl_lab.compare: error:") and says in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
def test_command_line_refuses_cuda_without_a_gpu(capsys):
    from fl_lab import compare

    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--device", "cuda"])
    assert exit_info.value.code == 2 and "--device cuda: no CUDA device here" in capsys.readouterr().err
