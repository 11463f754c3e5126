"""fl_lab.train: the schedule, a short run that learns, and a clear stop on divergence."""

import pytest
import torch
from torch.utils.data import DataLoader

from fl_lab.data import Shapes, collate
from fl_lab.model import RetinaNet
from fl_lab.train import Diverged, lr_multiplier, train


def test_lr_schedule():
    assert lr_multiplier(0, 900, warmup=100) == pytest.approx(1 / 3)
    assert lr_multiplier(50, 900, warmup=100) == pytest.approx(2 / 3)
    assert lr_multiplier(100, 900, warmup=100) == 1.0
    assert lr_multiplier(599, 900, warmup=100) == 1.0
    assert lr_multiplier(600, 900, warmup=100) == pytest.approx(0.1)  # 2/3 of the run (60k of 90k)
    assert lr_multiplier(800, 900, warmup=100) == pytest.approx(0.01)  # 8/9 (80k of 90k)
    assert lr_multiplier(0, 900, warmup=0) == 1.0


def tiny_model(prior=0.01):
    torch.manual_seed(0)
    return RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=2, prior=prior)


def test_training_reduces_the_loss_on_a_small_shapes_subset():
    data = Shapes(8, image_size=96, num_classes=3, max_objects=6)
    batch = collate([data[i] for i in range(8)])
    model = tiny_model()

    def loss_on_batch():
        with torch.no_grad():
            return model.loss(model(batch.images), batch.targets)

    before = loss_on_batch()
    history = train(model, [batch], steps=60, lr=0.01, warmup=5, progress=False)
    after = loss_on_batch()
    assert len(history) == 60 and history[0]["lr"] == pytest.approx(0.01 / 3)
    assert set(history[0]) >= {"step", "lr", "cls", "box", "total", "num_foreground"}
    assert after["total"] < 0.7 * before["total"], (before, after)
    assert after["cls"] < before["cls"] and after["box"] < before["box"]


def test_divergence_stops_with_a_clear_message():
    data = Shapes(4, image_size=64, num_classes=3, max_objects=4)
    loader = DataLoader(data, batch_size=4, collate_fn=collate)
    with pytest.raises(Diverged, match=r"diverged at iteration \d+.*prior") as err:
        train(tiny_model(prior=None), loader, steps=50, lr=1e3, warmup=0, loss_kwargs={"loss_fn": "ce"}, progress=False)
    assert len(err.value.history) < 50 and all(r["total"] == r["total"] for r in err.value.history)
    with pytest.raises(ValueError, match="lr"):
        train(tiny_model(), loader, steps=1, lr=0.0, progress=False)
