"""fl_lab.torchvision_detectors: torchvision's detectors behind fl_lab's interface — RetinaNet part by part,
equal to torchvision's own forward; Faster R-CNN and SSD whole, trained by fl_lab's loop and scored by
fl_lab's evaluation."""

import contextlib
import io
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader

from fl_lab.data import Shapes, collate
from fl_lab.evaluate import evaluate, predict
from fl_lab.model import RetinaNet
from fl_lab.torchvision_detectors import DETECTORS, TorchvisionDetector, build_torchvision_detector, input_side
from fl_lab.train import TrainSettings, train

torch.set_grad_enabled(True)
SIZE, K = 128, 3


@pytest.fixture(scope="module")
def data():
    return Shapes(8, image_size=SIZE, num_classes=K, seed=0)


def retinanet(size):
    """torchvision's RetinaNet as the builder makes it: its own transform leaves a normalised (size, size) batch as
    it is (no resize, no normalisation), so its full forward sees what the adapter's parts see."""
    torch.manual_seed(0)
    return build_torchvision_detector("retinanet", 3, size, "resnet18")


def targets():
    return [
        {"boxes": torch.tensor([[10.0, 12, 50, 40], [30, 5, 62, 60]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects: all background
        {"boxes": torch.tensor([[0.0, 0, 120, 100]]), "labels": torch.tensor([1])},
    ]


def test_retinanet_loss_by_parts_equals_torchvision_forward():
    """Compared with torchvision's full RetinaNet.forward(images, targets), its transform made an identity."""
    tv = retinanet(128)
    adapter = TorchvisionDetector(tv).train()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 128, 128)
    output = adapter(images)
    assert (output.cls_logits.shape == (3, sum(output.anchors_per_level), 3)
            and output.anchors.shape == (sum(output.anchors_per_level), 4))
    losses = adapter.loss(output, targets(), loss_fn="focal", normalize="batch")  # fl_lab's options are ignored
    expected = tv(list(images), targets())
    assert torch.allclose(losses["cls"], expected["classification"], rtol=1e-6)
    assert torch.allclose(losses["box"], expected["bbox_regression"], rtol=1e-6)
    assert torch.equal(losses["total"], losses["cls"] + losses["box"])
    assert 0 < int(losses["num_foreground"]) < len(output.anchors)
    losses["total"].backward()
    assert tv.head.classification_head.cls_logits.weight.grad.abs().sum() > 0
    assert tv.backbone.body.conv1.weight.grad.abs().sum() > 0  # trained from the stem up, like fl_lab's


def test_retinanet_detect_by_parts_equals_torchvision_eval_in_fl_labs_format():
    tv = retinanet(128)
    with torch.no_grad():
        tv.head.classification_head.cls_logits.bias.fill_(-1.0)  # p ≈ 0.27: many detections to compare
    adapter = TorchvisionDetector(tv).eval()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        dets = adapter.detect(adapter(images), [(128, 128)] * 2, max_detections=150)
        expected = tv(list(images))  # postprocess_detections with the settings detect just gave it
        fl_lab_det = RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=0).eval()
        reference = fl_lab_det.detect(fl_lab_det(images), [(128, 128)] * 2)
    for det, exp, ref in zip(dets, expected, reference, strict=True):
        assert len(det["boxes"]) == 150
        assert set(det) == set(ref) == {"boxes", "scores", "labels"}
        for key in det:
            assert torch.equal(det[key], exp[key])
            assert det[key].dtype == ref[key].dtype and det[key].shape[1:] == ref[key].shape[1:]
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])


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
    assert set(DETECTORS) == {"retinanet", "faster_rcnn", "ssd300", "ssdlite"}
    with pytest.raises(ValueError, match="kind must be one of"):
        build_torchvision_detector("yolo", 3, SIZE)
    with pytest.raises(ValueError, match="num_classes"):
        build_torchvision_detector("ssdlite", 0, SIZE)
    with pytest.raises(ValueError, match="amp"):
        TorchvisionDetector(torch.nn.Identity(), amp="int8")




@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_input_side_is_the_side_each_detector_resizes_to(kind):
    """What tables report as a detector's input size is what its transform does to a 128 px image:
    the SSDs resize to their native side (300, 320), the others keep fl_lab's size."""
    model = build_torchvision_detector(kind, 3, 128).eval()
    with torch.no_grad():
        batch, _ = model.transform([torch.zeros(3, 128, 128)])
    native = {"ssd300": 300, "ssdlite": 320}.get(kind, 128)  # torchvision's ssd300_vgg16, ssdlite320_mobilenet_v3_large
    assert batch.tensors.shape[-2:] == (native, native) and input_side(kind, 128) == native
    assert input_side(None, 128) == 128  # fl_lab's RetinaNet
