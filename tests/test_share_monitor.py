"""Where the loss goes during training: the monitor against a float64 reference, its figure, the live panel,
and ``python -m fl_lab.loss_share`` end to end."""

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from fl_lab import loss_share, plots, widgets
from fl_lab.analysis import GROUPS, LossSetting, LossShareMonitor
from fl_lab.data import Shapes, collate
from fl_lab.model import RetinaNet
from fl_lab.train import TrainSettings, train

torch.set_grad_enabled(True)
TINY = dict(image_size=64, train_images=8, val_images=4, num_classes=2, backbone="resnet18", fpn_channels=16,
            head_convs=1, batch_size=2, steps=4, warmup=1, workers=0, min_object_size=16.0, log_every=1,
            checkpoint_every=0, device="cpu", backbone_weights=None)


def reference_shares(logits: torch.Tensor, labels: torch.Tensor, gamma: float, alpha: float) -> dict[str, float]:
    """The paper's FL per (anchor, class) entry in float64, summed by kind: written from eq. 5, not from fl_lab.

    logits: (N, K); labels: (N,) class, -1 background, -2 ignored. A negative entry is easy when p_t > 0.5.
    """
    p = torch.sigmoid(logits.double())
    sums = dict.fromkeys(GROUPS, 0.0)
    for n in range(len(labels)):
        if labels[n] == -2:
            continue
        for k in range(logits.shape[1]):
            positive = int(labels[n]) == k
            p_t = float(p[n, k]) if positive else 1 - float(p[n, k])
            a_t = alpha if positive else 1 - alpha
            loss = -a_t * (1 - p_t) ** gamma * math.log(p_t)
            group = "positives" if positive else "hard negatives" if p_t <= 0.5 else "easy negatives"
            sums[group] += loss
    total = sum(sums.values())
    return {g: v / total for g, v in sums.items()}


def test_monitor_measures_every_n_steps_and_matches_a_float64_reference():
    data = Shapes(8, image_size=64, num_classes=2, seed=0, min_size=16.0)
    torch.manual_seed(0)
    model = RetinaNet(2, backbone="resnet18", fpn_channels=16, head_convs=1)
    seen = []

    class Recording(LossShareMonitor):
        def __call__(self, step, model, output, batch):
            super().__call__(step, model, output, batch)
            if not step % self.every:
                seen.append((step, output.cls_logits.detach().clone(), model.assign(output, batch.targets).labels))

    monitor = Recording(LossSetting(2.0, 0.25), every=2, on_row=lambda rows: calls.append(len(rows)))
    calls = []
    loader = DataLoader(data, batch_size=2, collate_fn=collate)
    train(model, loader, TrainSettings(steps=5, lr=0.01, warmup=0), "cpu", progress=False, monitor=monitor)
    assert [r["step"] for r in monitor.rows] == [0, 2, 4] and calls == [1, 2, 3]
    for row, (step, logits, labels) in zip(monitor.rows, seen, strict=True):
        assert sum(row[g] for g in GROUPS) == pytest.approx(1.0)
        expected = reference_shares(logits.reshape(-1, 2), labels.reshape(-1), 2.0, 0.25)
        for g in GROUPS:
            assert row[g] == pytest.approx(expected[g], rel=1e-4, abs=1e-7), (step, g)
    assert monitor.seconds > 0


def test_monitor_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        LossShareMonitor(LossSetting(2.0, 0.25), every=0)


def test_loss_share_figure_stacks_each_runs_shares():
    rows = [{"step": s, "positives": 0.2, "hard negatives": 0.3, "easy negatives": 0.5} for s in (0, 10, 20)]
    fig = plots.loss_share_figure({"live": [], "committed": rows}, total_steps=30, title="t")
    live, committed = fig.axes
    assert (live.get_title(), committed.get_title()) == ("live", "committed") and fig._suptitle.get_text() == "t"
    assert live.get_xlabel() == "iteration" and "share" in live.get_ylabel() and committed.get_xlim() == (0, 30)
    assert len(live.collections) == 0 and len(committed.collections) == 3  # one band per kind of example
    assert [t.get_text() for t in committed.get_legend().get_texts()] == list(GROUPS)
    top = committed.collections[-1].get_paths()[0].vertices[:, 1]
    assert top.max() == pytest.approx(1.0)  # the three shares stack to 1


def test_live_panel_redraws_with_the_reference_beside(monkeypatch):
    shown = []

    class Handle:
        def update(self, fig):
            shown.append(fig)

    def fake_display(fig, display_id=False):
        shown.append(fig)
        return Handle()

    monkeypatch.setattr(widgets, "display", fake_display)
    reference = {"α-CE, committed": [{"step": 0, "positives": 0.1, "hard negatives": 0.2, "easy negatives": 0.7}]}
    monitor = widgets.loss_share_panel("FL, live", LossSetting(2.0, 0.25), total_steps=5, reference=reference,
                                       every=1, redraw_every=2)
    assert len(shown) == 1 and [a.get_title() for a in shown[0].axes] == ["FL, live", "α-CE, committed"]
    drawn = []
    for step in range(5):  # measurements 1…5: drawn at the 2nd, the 4th and the last
        monitor.rows.append({"step": step, "positives": 0.5, "hard negatives": 0.3, "easy negatives": 0.2})
        monitor.on_row(monitor.rows)
        drawn.append(len(shown) - 1)
    assert drawn == [0, 1, 1, 2, 3] and len(shown[-1].axes[0].collections) == 3


def test_command_line_writes_both_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(loss_share.PRESETS, "cpu-pretrained", TINY)
    monkeypatch.setattr(loss_share, "EVERY", 2)
    assert loss_share.main(["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]) == 0
    saved = loss_share.load_results(tmp_path / "res" / "loss_share.json")
    assert list(saved) == list(loss_share.RUNS)
    for name, m in saved.items():
        assert [r["step"] for r in m["rows"]] == [0, 2]
        assert m["config"]["loss_fn"] == loss_share.RUNS[name]["loss_fn"] and 0 < m["monitor_s"] < m["train_s"]
    printed = capsys.readouterr().out
    assert loss_share.format_rows(saved) in printed
    assert json.loads((tmp_path / "res" / "loss_share.json").read_text())["every"] == 2
    assert (tmp_path / "res" / "loss_share.png").stat().st_size > 1000
