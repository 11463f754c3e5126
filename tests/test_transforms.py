"""fl_lab.data.transforms: the resize rule, flips, normalisation and pad-to-32 batching."""

import functools

import pytest
import torch
import torchvision.transforms.functional as TF

from fl_lab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    Compose,
    RandomHorizontalFlip,
    Resize,
    collate,
    normalize,
)


def sample(height, width, seed=0, num_boxes=3):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=g)
    xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([width, height]) * 0.5
    wh = torch.rand(num_boxes, 2, generator=g) * torch.tensor([width, height]) * 0.5 + 1
    boxes = torch.cat((xy, xy + wh), dim=1)
    return image, {"boxes": boxes, "labels": torch.arange(num_boxes), "image_id": seed}


def reference_size(height, width, min_size, max_size):
    """detectron2's ResizeShortestEdge.get_output_shape, in float64."""
    h, w = float(height), float(width)
    scale = min_size / min(h, w)
    new_h, new_w = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


@pytest.mark.parametrize(
    "height,width,min_size,max_size",
    [(480, 640, 800, 1333), (640, 480, 800, 1333), (427, 1280, 800, 1333), (1280, 300, 600, 1000),
     (800, 800, 800, 1333), (2000, 3000, 600, 1000), (37, 53, 800, 1333), (500, 333, 640, 640)],
)  # fmt: skip
def test_resize_follows_the_rule_and_scales_boxes_exactly(height, width, min_size, max_size):
    image, target = sample(height, width)
    out, out_target = Resize(min_size, max_size)(image, target)
    new_h, new_w = reference_size(height, width, min_size, max_size)
    assert out.shape == (3, new_h, new_w) and out.dtype == torch.float32
    assert min(new_h, new_w) == min_size or max(new_h, new_w) == max_size
    sy, sx = new_h / height, new_w / width
    assert out_target["scale"] == (sy, sx) and out_target["orig_size"] == (height, width)
    expected = target["boxes"].double() * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    torch.testing.assert_close(out_target["boxes"].double(), expected, rtol=1e-6, atol=1e-4)
    assert torch.equal(out_target["labels"], target["labels"]) and out_target["image_id"] == target["image_id"]
    assert torch.equal(target["boxes"], sample(height, width)[1]["boxes"])  # input left untouched


def test_resize_pixels_match_interpolate_and_scale_back():
    image, target = sample(60, 90)
    out, out_target = Resize(30, 100)(image, target)  # shrink: antialiased
    expected = torch.nn.functional.interpolate(image[None], (30, 45), mode="bilinear", antialias=True)[0]
    assert torch.equal(out, expected)
    out2, out_target2 = Resize(60, 200)(out, out_target)  # scales accumulate, orig_size stays
    sy, sx = out_target2["scale"]
    assert out2.shape == (3, 60, 90) and out_target2["orig_size"] == (60, 90) and (sy, sx) == (1.0, 1.0)
    torch.testing.assert_close(out_target2["boxes"], target["boxes"])


def test_flip_matches_reference_and_twice_is_identity():
    image, target = sample(20, 33)
    target["boxes"] = (target["boxes"] * 4).round() / 4  # quarter pixels: W - (W - x) == x exactly
    flip = RandomHorizontalFlip(p=1.0)
    out, out_target = flip(image, target)
    assert torch.equal(out, image[:, :, torch.arange(32, -1, -1)])
    x1, y1, x2, y2 = target["boxes"].T
    assert torch.equal(out_target["boxes"], torch.stack((33 - x2, y1, 33 - x1, y2), dim=1))
    back, back_target = flip(out, out_target)
    assert torch.equal(back, image) and torch.equal(back_target["boxes"], target["boxes"])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 0}
    assert flip(image, empty)[1]["boxes"].shape == (0, 4)


def test_flip_probability_and_generator():
    image, target = sample(8, 8)
    assert RandomHorizontalFlip(p=0.0)(image, target)[0] is image
    flips = [
        not torch.equal(RandomHorizontalFlip(0.5, torch.Generator().manual_seed(s))(image, target)[0], image)
        for s in range(200)
    ]
    assert 70 < sum(flips) < 130
    again = [not torch.equal(RandomHorizontalFlip(0.5, torch.Generator().manual_seed(s))(image, target)[0], image)
             for s in range(200)]  # fmt: skip
    assert flips == again


def test_compose_applies_in_order():
    image, target = sample(40, 80)
    out, out_target = Compose([Resize(20, 100), RandomHorizontalFlip(1.0)])(image, target)
    ref, ref_target = RandomHorizontalFlip(1.0)(*Resize(20, 100)(image, target))
    assert out.shape == (3, 20, 40) and torch.equal(out, ref) and torch.equal(out_target["boxes"], ref_target["boxes"])


@pytest.mark.parametrize(
    "image,target,message",
    [
        (torch.rand(1, 8, 8), None, r"shape \(3, H, W\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), None, "float tensor"),
        (torch.rand(3, 8, 8), {"boxes": torch.zeros(4)}, r"\(G, 4\)"),
        (torch.rand(3, 8, 8), {"labels": torch.zeros(1)}, r"'boxes' is a \(G, 4\) tensor"),
    ],
)
def test_transforms_validate_inputs(image, target, message):
    target = target if target is not None else {"boxes": torch.zeros(0, 4)}
    for transform in (Resize(), RandomHorizontalFlip(1.0)):
        with pytest.raises(ValueError, match=message):
            transform(image, target)
    with pytest.raises(ValueError, match=message):
        collate([(image, target)])


def test_normalize_values():
    images = torch.rand(2, 3, 5, 7)
    expected = torch.stack([TF.normalize(im, IMAGENET_MEAN, IMAGENET_STD) for im in images])
    assert torch.equal(normalize(images), expected)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="normalize"):
        normalize(torch.rand(4, 5, 7))


def test_collate_pads_to_multiples_of_32_with_zeros():
    batch = [sample(100, 300, seed=1), sample(257, 64, seed=2), sample(128, 128, seed=3)]
    out = collate(batch)
    assert isinstance(out, Batch) and out.images.shape == (3, 3, 288, 320) and out.images.dtype == torch.float32
    assert out.image_sizes == [(100, 300), (257, 64), (128, 128)]
    for i, (image, target) in enumerate(batch):
        h, w = out.image_sizes[i]
        assert torch.equal(out.images[i, :, :h, :w], TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD))
        padded = torch.ones_like(out.images[i], dtype=torch.bool)
        padded[:, :h, :w] = False
        assert bool((out.images[i][padded] == 0).all())
        assert out.targets[i] is target
    custom = functools.partial(collate, size_divisible=128)(batch)
    assert custom.images.shape == (3, 3, 384, 384)
    assert collate([sample(160, 96)]).images.shape == (1, 3, 160, 96)  # exact multiples get no padding


def test_batch_to_moves_every_tensor():
    out = collate([sample(10, 10)]).to(torch.device("meta"))
    assert out.images.device.type == "meta" and out.targets[0]["boxes"].device.type == "meta"
    assert out.targets[0]["image_id"] == 0 and out.image_sizes == [(10, 10)]


def test_collate_rejects_empty_batch():
    with pytest.raises(ValueError, match="non-empty batch"):
        collate([])
