"""fl_lab.model: grids, output layout, prior init, loss, detect, and parity with torchvision's RetinaNet."""

import math
from functools import partial

import pytest
import torch
import torchvision
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fl_lab.anchors import AnchorGenerator
from fl_lab.architecture import describe, parameter_counts
from fl_lab.loss import balanced_cross_entropy, focal_loss
from fl_lab.matcher import assign_targets, pad_targets
from fl_lab.model import RetinaNet, RetinaNetOutput
from fl_lab.torchvision_weights import retinanet_from_torchvision

torch.set_grad_enabled(True)


def small(**kw):
    torch.manual_seed(0)
    return RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=1, **kw)


def targets_for(*boxes_per_image):
    out = []
    for boxes in boxes_per_image:
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        out.append({"boxes": b, "labels": torch.arange(len(b)) % 3})
    return out


@pytest.mark.parametrize(
    "backbone, size",
    [("resnet18", (64, 64)), ("resnet18", (97, 130)), ("resnet18", (200, 77)), ("resnet50", (128, 193))],
)
def test_feature_grids_equal_anchor_generator(backbone, size):
    torch.manual_seed(0)
    model = RetinaNet(2, backbone=backbone, fpn_channels=32, head_convs=0).eval()
    grids = []
    model.backbone.register_forward_hook(lambda m, i, out: grids.extend(tuple(f.shape[-2:]) for f in out.values()))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, *size))
    assert grids == AnchorGenerator().feature_sizes(size)
    assert out.cls_logits.shape == (1, AnchorGenerator().num_anchors(size), 2)
    assert out.anchors_per_level == AnchorGenerator().num_anchors_per_level(size)
    assert torch.equal(out.anchors, AnchorGenerator().gen(size))


def test_output_layout_is_level_row_column_anchor_class():
    """Index ((offset_l + (y·W + x)·A + a)·K + k) of the flat logits is channel a·K + k at (y, x) of level l."""
    model = small().eval()
    raw = []
    model.class_subnet.out.register_forward_hook(lambda m, i, out: raw.append(out))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    A, K = 9, 3
    flat = out.cls_logits
    i = 0
    for level in raw:  # explicit loops: the reference the vectorised reshape must equal
        _, _, H, W = level.shape
        for y in range(H):
            for x in range(W):
                for a in range(A):
                    assert torch.equal(flat[:, i], level[:, a * K : (a + 1) * K, y, x])
                    i += 1
    assert i == flat.shape[1]


def test_prior_initialisation():
    model = small()
    bias = model.class_subnet.out.bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log(99)))  # -log((1 - π) / π), π = 0.01
    assert abs(float(model.class_subnet.out.weight.detach().std()) - 0.01) < 1e-3
    assert torch.all(model.box_subnet.out.bias == 0) and torch.all(model.class_subnet.conv[0][0].bias == 0)
    with torch.no_grad():
        p = model.eval()(torch.randn(1, 3, 64, 64)).cls_logits.sigmoid()
    assert abs(float(p.mean()) - 0.01) < 2e-3  # every anchor starts near π
    assert torch.all(small(prior=None).class_subnet.out.bias == 0)


def test_options_build_what_they_say():
    gn = small(head_norm="gn")
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gn.class_subnet.modules())
    assert small(p6_from="c5").backbone.fpn.extra_blocks.p6.in_channels == 512  # C5 of ResNet-18
    assert small(p6_from="p5").backbone.fpn.extra_blocks.p6.in_channels == 32
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in small().backbone.modules())  # from scratch: BN trains
    with pytest.raises(ValueError, match="num_classes"):
        RetinaNet(0)
    with pytest.raises(ValueError, match="backbone"):
        RetinaNet(3, backbone="vgg16")
    with pytest.raises(ValueError, match="prior"):
        RetinaNet(3, prior=1.0)
    with pytest.raises(ValueError, match="p6_from"):
        RetinaNet(3, p6_from="c4")
    with pytest.raises(ValueError, match="strides"):
        RetinaNet(3, anchor_generator=AnchorGenerator(sizes=(32, 64), strides=(8, 16)))
    with pytest.raises(ValueError, match="images"):
        small()(torch.zeros(3, 64, 64))


def test_backbone_weights_from_a_file(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(resnet.bn1.running_mean)
    path = tmp_path / "r18.pth"
    torch.save(resnet.state_dict(), path)
    model = RetinaNet(3, backbone="resnet18", backbone_weights=path)
    body = model.backbone.body
    assert (torch.equal(body.conv1.weight, resnet.conv1.weight)
            and torch.equal(body.bn1.running_mean, resnet.bn1.running_mean))
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        RetinaNet(3, backbone="resnet18", backbone_weights=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="does not fit"):
        RetinaNet(3, backbone="resnet50", backbone_weights=path)


def test_backbone_weights_enum_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="torch hub cache"):
        RetinaNet(3, backbone="resnet18", backbone_weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    # Once the file is in the cache, it loads.
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(),
               tmp_path / "checkpoints" / weights.url.split("/")[-1])
    RetinaNet(3, backbone="resnet18", backbone_weights=weights)


# ---------------------------------------------------------------------------- loss
def reference_loss(out, targets, gamma=2.0, alpha=0.25):
    """Float64, dense one-hot targets, per-anchor loops over nothing but tensors: the paper's normalisation."""
    boxes, labels, valid = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets])
    assigned = assign_targets(out.anchors, boxes, labels, valid)
    x = out.cls_logits.double()
    lab = assigned.labels
    onehot = torch.zeros_like(x)
    fg = lab >= 0
    onehot[fg, lab[fg]] = 1.0
    p = x.sigmoid()
    p_t = torch.where(onehot == 1, p, 1 - p)
    a_t = torch.where(onehot == 1, alpha, 1 - alpha)
    fl = -a_t * (1 - p_t) ** gamma * torch.log(p_t)
    fl = fl * (lab != -2).unsqueeze(-1)
    n = max(1, int(fg.sum()))
    box = (out.box_deltas.double()[fg] - assigned.box_targets.double()[fg]).abs().sum()
    return fl.sum() / n, box / n


TARGETS = [[[10.0, 12.0, 50.0, 40.0], [30, 5, 62, 60]], [[0.0, 0.0, 90.0, 64.0]], []]


def test_loss_matches_float64_reference_and_handles_empty_images():
    model = small()
    out = model(torch.randn(3, 3, 64, 96))
    targets = targets_for(*TARGETS)
    losses = model.loss(out, targets)
    cls_ref, box_ref = reference_loss(out, targets)
    assert torch.allclose(losses["cls"].double(), cls_ref, rtol=1e-5)
    assert torch.allclose(losses["box"].double(), box_ref, rtol=1e-5)
    assert torch.equal(losses["total"], losses["cls"] + losses["box"])
    losses["total"].backward()
    assert model.class_subnet.out.weight.grad.abs().sum() > 0 and model.box_subnet.out.weight.grad.abs().sum() > 0
    empty = model.loss(model(torch.randn(1, 3, 64, 64)), targets_for([]))
    assert empty["box"] == 0 and torch.isfinite(empty["cls"]) and empty["num_foreground"] == 0


def test_loss_options():
    model = small()
    out = model(torch.randn(3, 3, 64, 96))
    targets = targets_for(*TARGETS)
    batch = model.loss(out, targets)
    # per_image: each image normalised by its own count, then averaged (torchvision).
    singles = [model.loss(RetinaNetOutput(out.cls_logits[i : i + 1], out.box_deltas[i : i + 1], out.anchors,
                                          out.anchors_per_level), targets[i : i + 1]) for i in range(3)]
    per_image = model.loss(out, targets, normalize="per_image")
    for key in ("cls", "box"):
        assert torch.allclose(per_image[key], sum(s[key] for s in singles) / 3, rtol=1e-5)
    # ema: 0.9 · running + 0.1 · count, updated only while training.
    model.eval()
    ema = model.loss(out, targets, normalize="ema")
    n = float(batch["num_foreground"])
    assert torch.allclose(ema["cls"], batch["cls"] * n / (0.9 * 100 + 0.1 * n)) and float(model.foreground_ema) == 100
    model.train()
    model.loss(out, targets, normalize="ema")
    assert math.isclose(float(model.foreground_ema), 0.9 * 100 + 0.1 * n, rel_tol=1e-6)
    # loss functions by name or as callables
    bce = model.loss(out, targets, loss_fn="balanced_ce")["cls"]
    assert torch.allclose(bce, balanced_cross_entropy(out.cls_logits, targets_labels(model, out, targets)) / n)
    custom = model.loss(out, targets, loss_fn=partial(focal_loss, gamma=1.0, alpha=0.5))["cls"]
    assert torch.allclose(custom, focal_loss(out.cls_logits, targets_labels(model, out, targets), 1.0, 0.5) / n)
    # smooth L1 with β: never above L1, equal to it as β -> 0
    assert model.loss(out, targets, box_loss="smooth_l1", beta=0.5)["box"] < batch["box"]
    assert torch.allclose(model.loss(out, targets, box_loss="smooth_l1", beta=1e-9)["box"], batch["box"])
    # cls_weight scales the classification term of the total only (what trains), and its gradient
    weighted = model.loss(out, targets, cls_weight=4.0)
    assert torch.allclose(weighted["cls"], batch["cls"]) and torch.allclose(weighted["box"], batch["box"])
    assert torch.allclose(weighted["total"], 4 * batch["cls"] + batch["box"])
    logits = out.cls_logits.detach().requires_grad_()
    for weight in (1.0, 4.0):
        grad, = torch.autograd.grad(model.loss(out._replace(cls_logits=logits), targets, cls_weight=weight)["total"],
                                    logits)
        if weight == 1.0:
            unit = grad
    assert torch.allclose(grad, 4 * unit)
    for bad in ({"normalize": "image"}, {"box_loss": "giou"}, {"loss_fn": "hinge"}, {"cls_weight": 0.0},
                {"cls_weight": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            model.loss(out, targets, **bad)
    with pytest.raises(ValueError, match="class 7"):
        model.loss(out, [{"boxes": torch.tensor([[0.0, 0, 9, 9]]), "labels": torch.tensor([7])}] + targets[1:])
    with pytest.raises(ValueError, match="2 targets"):
        model.loss(out, targets[:2])


def targets_labels(model, out, targets):
    boxes, labels, valid = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets])
    return assign_targets(out.anchors, boxes, labels, valid).labels


# ---------------------------------------------------------------------------- detect
def crafted_output(model, size, hits):
    """An output with all scores ≈ 0 except (anchor, class, logit) in ``hits``, and zero deltas."""
    gen = model.anchor_generator
    anchors = gen.gen(size)
    logits = torch.full((1, len(anchors), model.num_classes), -20.0)
    for anchor, cls, logit in hits:
        logits[0, anchor, cls] = logit
    return RetinaNetOutput(logits, torch.zeros(1, len(anchors), 4), anchors, gen.num_anchors_per_level(size))


def test_detect_decodes_thresholds_and_suppresses_per_class():
    model = small()
    size = (128, 128)
    anchors = model.anchor_generator.gen(size)
    iou = torchvision.ops.box_iou(anchors, anchors)
    a = 2000  # a P3 anchor inside the image, and its most-overlapping neighbour
    iou[a, a] = 0
    b = int(iou[a].argmax())
    assert iou[a, b] > 0.5
    c = int((iou[a] == 0).nonzero()[0])  # a far-away anchor
    hits = [(a, 1, 3.0), (b, 1, 2.0), (b, 2, 1.0), (c, 0, -2.0), (c, 2, -3.5)]  # σ(-3.5) = 0.029 < 0.05
    det = model.detect(crafted_output(model, size, hits), [size])[0]
    # b/class 1 is suppressed by a/class 1; b/class 2 survives (class-aware NMS); c/class 2 is below 0.05.
    assert det["labels"].tolist() == [1, 2, 0]
    assert torch.allclose(det["scores"], torch.sigmoid(torch.tensor([3.0, 1.0, -2.0])))
    expected = torch.stack([anchors[a], anchors[b], anchors[c]]).clamp(min=0, max=128)
    assert torch.allclose(det["boxes"], expected)
    assert det["labels"].dtype == torch.int64
    few = model.detect(crafted_output(model, size, hits), [size], max_detections=2, score_thresh=0.5)[0]
    assert few["labels"].tolist() == [1, 2]


def test_detect_clips_to_each_images_size_and_caps_count():
    model = small().eval()
    model.class_subnet.out.bias.data.zero_()  # p ≈ 0.5 everywhere: many candidates
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    dets = model.detect(out, [(128, 128), (100, 60)], max_detections=50)
    for det, (h, w) in zip(dets, [(128, 128), (100, 60)], strict=True):
        assert len(det["boxes"]) == 50
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        assert det["boxes"][:, 0::2].max() <= w and det["boxes"][:, 1::2].max() <= h and det["boxes"].min() >= 0
    with pytest.raises(ValueError, match="image sizes"):
        model.detect(out, [(128, 128)])
    sizes = [(128, 128)] * 2
    for bad, message in ((dict(score_thresh=float("nan")), r"score_thresh must be in \[0, 1\), got nan"),
                         (dict(score_thresh=1.0), "score_thresh"), (dict(nms_thresh=1.5), r"nms_thresh .* got 1.5"),
                         (dict(nms_thresh=0.0), "nms_thresh"), (dict(topk=0), "topk must be an integer >= 1, got 0"),
                         (dict(topk=2.5), "topk"), (dict(max_detections=0), "max_detections must be")):
        with pytest.raises(ValueError, match=message):
            model.detect(out, sizes, **bad)


# ---------------------------------------------------------------------------- torchvision
@pytest.fixture(scope="module")
def torchvision_pair():
    # Built as retinanet_resnet50_fpn builds it for its COCO weights: frozen BatchNorm with ε = 0.
    torch.manual_seed(0)
    body = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3,
                                 returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    tv = TVRetinaNet(body, num_classes=4).eval()
    overwrite_eps(tv, 0.0)
    with torch.no_grad():  # make every BatchNorm and bias non-trivial, so a mis-mapped weight shows
        for name, buf in tv.named_buffers():
            if "running_mean" in name:
                buf.normal_(0, 0.1)
            elif "running_var" in name:
                buf.uniform_(0.5, 2.0)
        for name, p in tv.named_parameters():
            if name.endswith("bias") or "bn" in name:
                p.normal_(0, 0.1)
        tv.head.classification_head.cls_logits.bias.fill_(-1.0)  # p ≈ 0.27: plenty of detections
    return tv, retinanet_from_torchvision(tv).eval()


def test_from_torchvision_same_outputs_and_detections(torchvision_pair):
    tv, ours = torchvision_pair
    torch.manual_seed(1)
    images = torch.randn(1, 3, 256, 384)  # sides multiples of 128: identical anchors
    image_sizes = [(250, 380)]
    with torch.no_grad():
        features = list(tv.backbone(images).values())
        head = tv.head(features)
        tv_anchors = tv.anchor_generator(ImageList(images, image_sizes), features)
        out = ours(images)
        assert torch.equal(out.cls_logits, head["cls_logits"])
        assert torch.equal(out.box_deltas, head["bbox_regression"])
        assert torch.equal(out.anchors, tv_anchors[0])
        split = {k: list(v.split(out.anchors_per_level, dim=1)) for k, v in head.items()}
        tv_det = tv.postprocess_detections(split, [list(tv_anchors[0].split(out.anchors_per_level))], image_sizes)[0]
        det = ours.detect(out, image_sizes, max_detections=300)[0]
    assert len(tv_det["boxes"]) == 300
    assert torch.equal(det["labels"], tv_det["labels"]) and torch.equal(det["scores"], tv_det["scores"])
    assert torch.equal(det["boxes"], tv_det["boxes"])
    # A state dict carries no ε: given the right one, the copy is exact again.
    from_state = retinanet_from_torchvision(tv.state_dict(), bn_eps=0.0).eval()
    with torch.no_grad():
        assert torch.equal(from_state(images).cls_logits, out.cls_logits)


def test_from_torchvision_loss_equals_torchvision_per_image(torchvision_pair):
    tv, ours = torchvision_pair
    torch.manual_seed(2)
    images = torch.randn(2, 3, 256, 256)
    targets = targets_for([[20.0, 30, 120, 100], [150, 40, 250, 250]], [[0.0, 0, 256, 256], [60, 60, 75, 90]])
    with torch.no_grad():
        out = ours(images)
        head = {"cls_logits": out.cls_logits, "bbox_regression": out.box_deltas}
        anchors = [out.anchors] * 2
        matched = [tv.proposal_matcher(torchvision.ops.box_iou(t["boxes"], out.anchors)) for t in targets]
        expected = tv.head.compute_loss(targets, head, anchors, matched)
        ours_loss = ours.loss(out, targets, normalize="per_image")
    assert torch.allclose(ours_loss["cls"], expected["classification"], rtol=1e-5)
    assert torch.allclose(ours_loss["box"], expected["bbox_regression"], rtol=1e-5)


def test_from_torchvision_accepts_old_head_keys_and_rejects_others(torchvision_pair):
    tv, ours = torchvision_pair
    old = {(k.replace(".0.weight", ".weight").replace(".0.bias", ".bias")
            if ".conv." in k and k.startswith("head") else k): v
           for k, v in tv.state_dict().items()}
    assert "head.classification_head.conv.0.weight" in old
    again = retinanet_from_torchvision(old)
    assert torch.equal(again.class_subnet.conv[0][0].weight, ours.class_subnet.conv[0][0].weight)
    with pytest.raises(ValueError, match="cls_logits"):
        retinanet_from_torchvision({"backbone.body.conv1.weight": torch.zeros(1)})


def test_describe_and_parameter_counts():
    model = small()
    text = describe(model, (128, 192))
    # ResNet-18's C3 has 128 channels at stride 8; class output A·K = 27; P7 of 128×192 is 1×2.
    assert "128 × 16 × 24" in text and "27 × 16 × 24" in text and "32 × 1 × 2" in text
    assert "3,456" in text  # P3 anchors: 16 · 24 · 9
    counts = parameter_counts(model)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    assert counts["class subnet"] == (32 * 32 * 9 + 32) + (32 * 27 * 9 + 27)  # one tower conv + output conv
