"""fl_lab.anchors: counts, an independent reference, the backbone's grids, and torchvision parity."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from fl_lab.anchors import AnchorGenerator, level_names


@pytest.mark.parametrize("size,count", [((640, 640), 76_725), ((600, 1000), 113_193), ((800, 1344), 201_600)])
def test_anchor_counts_from_the_paper(size, count):
    gen = AnchorGenerator()
    assert gen.num_anchors(size) == count
    assert gen.gen(size).shape == (count, 4)


def test_feature_sizes_match_a_stride_two_conv_chain():
    """ResNet stem (7×7/2 conv, 3×3/2 pool), three stride-2 stages, then P6 and P7's 3×3/2 convs."""
    gen = AnchorGenerator()
    for size in [(37, 53), (600, 1000), (129, 255)]:
        x = torch.zeros(1, 1, *size)
        steps = [torch.nn.Conv2d(1, 1, 7, 2, 3), torch.nn.MaxPool2d(3, 2, 1)] + [torch.nn.Conv2d(1, 1, 3, 2, 1)] * 5
        grids = []
        with torch.no_grad():
            for i, step in enumerate(steps):
                x = step(x)
                if i >= 2:  # after C3 (stride 8)
                    grids.append(tuple(x.shape[-2:]))
        assert gen.feature_sizes(size) == grids


def reference_anchors(size, sizes, scales, ratios, strides, offset):
    """Straight from the paper, in float64 Python: area (size·scale)², ratio = h / w."""
    out = []
    for base, stride in zip(sizes, strides, strict=True):
        rows, cols = size[0], size[1]
        for _ in range(int(math.log2(stride))):
            rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
        for r in range(rows):
            for c in range(cols):
                cx, cy = (c + offset) * stride, (r + offset) * stride
                for ratio in ratios:
                    for scale in scales:
                        area = (base * scale) ** 2
                        w = math.sqrt(area / ratio)
                        h = ratio * w
                        out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_matches_float64_reference(offset):
    gen = AnchorGenerator(offset=offset)
    size = (100, 150)
    expected = reference_anchors(size, gen.sizes, gen.scales, gen.aspect_ratios, gen.strides, offset)
    torch.testing.assert_close(gen.gen(size, dtype=torch.float64), expected.float().double(), rtol=0, atol=1e-4)
    anchors = gen.gen(size, dtype=torch.float64)
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    assert {round(v, 4) for v in (h / w).tolist()} == {0.5, 1.0, 2.0}
    assert math.isclose(float((w * h).max().sqrt()), 512 * 2 ** (2 / 3), rel_tol=1e-6)  # the paper's 813 px


def test_order_is_level_row_column_then_ratio_major():
    gen = AnchorGenerator()
    size = (64, 96)
    anchors = gen.gen(size)
    (rows, cols) = gen.feature_sizes(size)[0]
    first = anchors[: rows * cols * 9].reshape(rows, cols, 9, 4)
    torch.testing.assert_close(first[0, 1] - first[0, 0], torch.tensor([8.0, 0, 8, 0]).expand(9, 4))
    torch.testing.assert_close(first[1, 0] - first[0, 0], torch.tensor([0.0, 8, 0, 8]).expand(9, 4))
    widths = first[0, 0, :, 2] - first[0, 0, :, 0]
    heights = first[0, 0, :, 3] - first[0, 0, :, 1]
    assert (heights[:3] < widths[:3]).all() and torch.allclose(heights[3:6], widths[3:6])  # ratio 0.5 first
    assert (widths[0] < widths[1]) and (widths[1] < widths[2])  # then scales ascending
    levels = gen.level_of(size)
    assert (levels.tolist() == sorted(levels.tolist())
            and torch.bincount(levels).tolist() == gen.num_anchors_per_level(size))
    assert level_names(gen) == ["P3", "P4", "P5", "P6", "P7"]


TV_SIZES = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])


def torchvision_anchors(size, grids):
    tv = TVAnchorGenerator(TV_SIZES, ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(1, 3, *size), [size])
    return tv(images, [torch.zeros(1, 1, h, w) for h, w in grids])[0]


@pytest.mark.parametrize("size", [(512, 512), (640, 384), (256, 1024), (1024, 768), (128, 128)])
def test_torchvision_preset_is_exact(size):
    ours = AnchorGenerator.torchvision()
    assert torch.equal(ours.gen(size), torchvision_anchors(size, ours.feature_sizes(size)))


def test_documented_difference_torchvision_infers_strides():
    ours = AnchorGenerator.torchvision()
    size = (800, 800)
    grids = ours.feature_sizes(size)
    assert [size[0] // h for h, _ in grids] == [8, 16, 32, 61, 114]  # torchvision's P6/P7 strides
    theirs, mine = torchvision_anchors(size, grids), ours.gen(size)
    p3_to_p5 = sum(ours.num_anchors_per_level(size)[:3])
    assert torch.equal(theirs[:p3_to_p5], mine[:p3_to_p5])
    assert not torch.equal(theirs[p3_to_p5:], mine[p3_to_p5:])


def test_cache_per_size_and_dtype():
    gen = AnchorGenerator()
    assert gen.gen((64, 64)) is gen.gen((64, 64))
    assert gen.gen((64, 64), dtype=torch.float64).dtype == torch.float64
    assert gen.gen((64, 128)).shape[0] != gen.gen((64, 64)).shape[0]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(strides=(8, 12, 32, 64, 128)), "powers of two"),
        (dict(sizes=(32, 64)), "one size per stride"),
        (dict(offset=1.0), "offset"),
        (dict(scales=()), "scales"),
        (dict(aspect_ratios=(0.5, -1.0)), "aspect_ratios"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnchorGenerator(**kwargs)


@pytest.mark.parametrize("size", [(0, 10), (10.5, 10), ("a", 3), (10,)])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size"):
        AnchorGenerator().num_anchors(size)
