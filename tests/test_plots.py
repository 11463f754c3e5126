"""fl_lab.plots: every figure has a title, axis labels and a legend, and draws the right data."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from fl_lab import plots
from fl_lab.analysis import LossSetting, compare_losses, count_assignments, simulate_anchor_batch
from fl_lab.anchors import AnchorGenerator, level_names
from fl_lab.loss import focal_loss_of_pt
from fl_lab.matcher import assign_targets


def assert_labelled(fig: Figure, n_axes: int):
    assert isinstance(fig, Figure) and len(fig.axes) == n_axes
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax
        assert ax.get_legend() is not None, ax
    fig.canvas.draw()  # renders without error


def test_figure1_draws_one_curve_per_gamma():
    gammas = (0, 0.5, 1, 2, 5)
    fig = plots.figure1(gammas)
    assert_labelled(fig, 1)
    lines = fig.axes[0].get_lines()
    assert len(lines) == len(gammas)
    for line, gamma in zip(lines, gammas, strict=True):
        x, y = line.get_data()
        np.testing.assert_allclose(y, focal_loss_of_pt(torch.as_tensor(x), gamma).numpy())
        assert f"γ = {gamma:g}" in line.get_label()


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, 0.5), (5.0, 0.9)])
def test_loss_explorer_figure(gamma, alpha):
    fig = plots.loss_explorer_figure(gamma, alpha)
    assert_labelled(fig, 2)
    ce, pos, neg = fig.axes[0].get_lines()
    for line, weight in ((ce, 1.0), (pos, alpha), (neg, 1 - alpha)):  # each against the paper's formula in p_t
        p_t = np.asarray(line.get_data()[0], dtype=np.float64)
        focusing = 1.0 if line is ce else (1 - p_t) ** gamma
        np.testing.assert_allclose(line.get_data()[1], weight * focusing * -np.log(p_t), rtol=1e-6)
    assert f"γ = {gamma:g}" in fig.axes[0].get_title()


def test_imbalance_figure_shows_counts_and_shares():
    logits, target = simulate_anchor_batch(num_anchors=2000, num_positives=4)
    results = compare_losses(logits, target, [LossSetting(0, None), LossSetting(2, 0.25)])
    fig = plots.imbalance_figure(results)
    assert_labelled(fig, 2)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [g.count for g in results["CE"].values()]
    widths = [p.get_width() for p in fig.axes[1].patches]  # group-major: 2 bars per group
    np.testing.assert_allclose(widths[0::2], [g.share for g in results["CE"].values()])
    np.testing.assert_allclose(sum(widths), 2.0)


# ---------------------------------------------------------------- lesson 02: anchors

IMAGE = np.zeros((200, 160, 3), dtype=np.uint8)
GT = torch.tensor([[20.0, 30.0, 120.0, 150.0], [100.0, 10.0, 140.0, 40.0]])


def test_cell_anchors_figure_draws_a_anchors():
    gen = AnchorGenerator()
    fig = plots.cell_anchors_figure(IMAGE, gen, level=1, center=(70, 90))
    assert_labelled(fig, 1)
    drawn = [c for c in fig.axes[0].collections]
    assert sum(len(c.get_segments()) for c in drawn) == 9
    assert "P4" in fig.axes[0].get_title()


def test_pyramid_figure_has_a_panel_per_level():
    gen = AnchorGenerator()
    fig = plots.pyramid_figure(IMAGE, gen, locations_per_level=2)
    assert_labelled(fig, 5)
    counts = gen.num_anchors_per_level(IMAGE.shape[:2])
    for ax, name, count in zip(fig.axes, level_names(gen), counts, strict=True):
        assert ax.get_title().startswith(name) and f"{count:,} anchors" in ax.get_title()
        assert sum(len(c.get_segments()) for c in ax.collections) == 2 * 9


def test_anchor_grid_figure_draws_every_location():
    gen = AnchorGenerator()
    fig = plots.anchor_grid_figure(IMAGE, gen, level=0, ratio_index=2, scale_index=1)
    assert_labelled(fig, 1)
    rows, cols = gen.feature_sizes(IMAGE.shape[:2])[0]
    every, one = fig.axes[0].collections
    assert len(every.get_segments()) == rows * cols and len(one.get_segments()) == 1
    (x1, y1), (x2, _), (_, y2) = one.get_segments()[0][:3]
    assert abs((y2 - y1) / (x2 - x1) - 2.0) < 1e-9  # aspect ratio h / w = 2


def test_assignment_figures():
    gen = AnchorGenerator()
    size = IMAGE.shape[:2]
    anchors, levels = gen.gen(size), gen.level_of(size)
    labels = assign_targets(anchors, GT[None], torch.tensor([[0, 1]])).labels[0]
    fig = plots.assignment_figure(IMAGE, anchors, levels, labels, GT, names=level_names(gen))
    assert_labelled(fig, 5)
    counts = count_assignments(labels, levels, 5)
    for ax, (fg, ign, bg) in zip(fig.axes, counts.tolist(), strict=True):
        assert f"{bg:,} background" in ax.get_title()
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert f"foreground ({fg})" in texts and f"ignored ({ign})" in texts
    fig = plots.assignment_counts_figure(counts, level_names(gen), "per level")
    assert_labelled(fig, 1)
    assert len(fig.axes[0].patches) == 15


def test_ground_truth_figure():
    fig = plots.ground_truth_figure(IMAGE, GT, torch.tensor([1, 0]), ["cat", "dog"])
    assert_labelled(fig, 1)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["dog (100×120)", "cat (40×30)"]


def test_dataset_figure_draws_each_box_in_its_class_colour():
    images = [torch.rand(3, 40, 60), torch.rand(3, 40, 60), torch.rand(3, 40, 60)]
    targets = [
        {"boxes": torch.tensor([[1.0, 2, 10, 20], [5, 5, 30, 30]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[0.0, 0, 59, 39]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    fig = plots.dataset_figure(images, targets, ["circle", "square"], columns=2)
    assert len(fig.axes) == 4 and not fig.axes[3].axison  # the spare panel is blank
    assert [ax.get_title() for ax in fig.axes[:3]] == ["2 objects", "1 object", "0 objects"]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes[:3])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["circle", "square"]
    outlines = [seg for coll in fig.axes[0].collections for seg in coll.get_segments()]
    assert sorted(tuple(np.asarray(s).min(0)) + tuple(np.asarray(s).max(0))
                  for s in outlines) == [(1, 2, 10, 20), (5, 5, 30, 30)]
    assert fig._suptitle.get_text()
    fig.canvas.draw()


def test_training_curves_figure_marks_a_diverged_run():
    histories = {"ok": [{"step": i, "total": 5.0 - i / 10} for i in range(10)],
                 "bad": [{"step": i, "total": 5.0 * 10**i} for i in range(4)],
                 # a log: every 10th step and the last one run (99 of 100): finished; one stopped at 50
                 "logged": [{"step": i, "total": 1.0} for i in (*range(0, 100, 10), 99)],
                 "logged, stopped": [{"step": i, "total": 1.0} for i in range(0, 60, 10)]}
    fig = plots.training_curves_figure(histories, total_steps=10, title="t")
    assert_labelled(fig, 1)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["ok", "bad — diverged after step 3"]
    logs = plots.training_curves_figure({k: histories[k] for k in ("logged", "logged, stopped")}, total_steps=100)
    labels = [t.get_text() for t in logs.axes[0].get_legend().get_texts()]
    assert labels == ["logged", "logged, stopped — diverged after step 50"]
    assert sum(line.get_marker() == "x" for line in logs.axes[0].get_lines()) == 1
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [r["total"] for r in histories["ok"]])


def test_training_log_figure():
    rows = [{"step": i, "lr": 0.01 * (0.1 if i > 6 else 1), "cls": 1.0 / (i + 1), "box": 0.5,
             "total": 1.0 / (i + 1) + 0.5}
            for i in range(10)] + [{"replicas": 2, "replicas_identical": True}]
    fig = plots.training_log_figure(rows)
    assert_labelled(fig, 2)
    losses, lr = fig.axes
    assert [line.get_label() for line in losses.get_lines()] == [
        "classification (focal) loss", "box regression loss", "total"
    ]
    np.testing.assert_allclose(lr.get_lines()[0].get_ydata(), [r["lr"] for r in rows[:10]])


def test_gap_figure_draws_each_arm_and_the_gap_seed_by_seed_with_its_t_interval():
    points = [(550, [0.05, 0.07, 0.06], [0.04, 0.05, 0.03]), (16, [0.10, 0.12, 0.11], [0.20, 0.23, 0.21])]
    fig = plots.gap_figure(points, xlabel="negatives per positive", title="t", log_x=True)
    assert_labelled(fig, 2)
    arms, gap = fig.axes
    assert len(arms.containers) == 2 and len(gap.containers) == 1
    seeds = [line for line in gap.get_lines() if line.get_marker() == "o"]
    assert len(seeds) == 3  # one line per seed, through its difference at each factor value
    np.testing.assert_allclose(seeds[1].get_ydata(), [100 * (0.12 - 0.23), 100 * (0.07 - 0.05)])
    line, _, (bars,) = gap.containers[0]
    xs, ys = line.get_data()
    assert [float(x) for x in xs] == [16, 550]  # sorted by the factor
    np.testing.assert_allclose(np.asarray(ys, dtype=float), [100 * -0.1033333, 100 * 0.02], rtol=1e-5)
    # at 550 the differences are 1, 2, 3 (×100): sd 1, SE 1/√3, t(2 df) = 4.303 from a t table
    segment = bars.get_segments()[1]
    np.testing.assert_allclose(segment[1][1] - segment[0][1], 2 * 4.303 / np.sqrt(3), rtol=1e-4)
    assert arms.get_xscale() == "log" and "3 seeds" in arms.get_title()
    assert all(line.get_linestyle() == "-" for line in seeds)
    # rows that draw other data (another canvas): each seed's dots, no line pretending to pair them
    apart = plots.gap_figure(points, xlabel="negatives per positive", title="t", log_x=True, joined=False).axes[1]
    dots = [line for line in apart.get_lines() if line.get_marker() == "o"]
    assert len(dots) == 3 and all(line.get_linestyle() == "None" for line in dots)
    np.testing.assert_allclose(dots[1].get_ydata(), seeds[1].get_ydata())
    assert "rows draw other data" in [t.get_text() for t in apart.get_legend().get_texts()][0]


def test_coverage_figure_shows_each_setting_and_the_papers_imbalance():
    fig = plots.coverage_figure({"small objects": torch.tensor([0.2, 0.45, 0.7]), "fits": torch.tensor([0.6, 0.8])},
                                {"small objects": 35.0, "fits": 90.0})
    assert len(fig.axes) == 2
    hist, bars = fig.axes
    assert hist.get_xlabel() and hist.get_ylabel() and hist.get_legend() and bars.get_legend() and bars.get_xlabel()
    labels = [t.get_text() for t in hist.get_legend().get_texts()]
    assert "small objects: 67% below 0.5" in labels and "fits: 0% below 0.5" in labels
    assert [round(p.get_width()) for p in bars.patches] == [35, 90] and bars.get_xscale() == "log"
    fig.canvas.draw()


def _appendix_b(x_t: np.ndarray, gamma: float) -> np.ndarray:
    """dFL/dx_t of a positive, written from the paper's Appendix B (independent of fl_lab.loss)."""
    p = 1 / (1 + np.exp(-x_t))
    return (1 - p) ** gamma * (gamma * p * np.log(p) + p - 1)


def test_gradient_figure_draws_appendix_bs_derivative():
    fig = plots.gradient_figure(gammas=(0, 2, 5))
    assert_labelled(fig, 1)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and "CE" in lines[0].get_label()
    for line, gamma in zip(lines, (0, 2, 5), strict=True):
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        np.testing.assert_allclose(y, _appendix_b(x, gamma), atol=1e-12)


def test_focal_star_figure_draws_fl_star_beside_fl_and_ce():
    fig = plots.focal_star_figure(settings=((2.0, 1.0), (4.0, 0.0)))
    assert_labelled(fig, 1)
    ce, fl, star21, star40 = fig.axes[0].get_lines()
    x = np.asarray(ce.get_data()[0], dtype=float)

    def softplus(z):  # -log σ(z) = softplus(-z)
        return np.logaddexp(0, z)

    np.testing.assert_allclose(np.asarray(ce.get_data()[1], dtype=float), softplus(-x), atol=1e-12)
    np.testing.assert_allclose(np.asarray(star21.get_data()[1], dtype=float), softplus(-(2 * x + 1)) / 2, atol=1e-12)
    np.testing.assert_allclose(np.asarray(star40.get_data()[1], dtype=float), softplus(-4 * x) / 4, atol=1e-12)
    assert "γ = 2, β = 1" in star21.get_label() and "FL, γ = 2" in fl.get_label()


def test_architecture_figure_draws_each_levels_maps_with_their_shapes():
    from fl_lab.architecture import level_shapes
    from fl_lab.model import RetinaNet

    levels = level_shapes(RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=1), (128, 192))
    assert [(lv["level"], lv["stride"], lv["C"], lv["P"]) for lv in levels[::2]] == [
        ("P3", 8, (128, 16, 24), (32, 16, 24)), ("P5", 32, (512, 4, 6), (32, 4, 6)), ("P7", 128, None, (32, 1, 2))]
    assert levels[0]["class"] == (27, 16, 24) and levels[0]["box"] == (36, 16, 24) and levels[0]["anchors"] == 3456
    fig = plots.architecture_figure(levels)
    assert_labelled(fig, 1)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "C3  128 × 16 × 24" in texts and "P7  32 × 1 × 2\nstride 128" in texts and "box 36 × 16 × 24" in texts
    assert len(fig.axes[0].patches) == 3 + 5 * 3 + (3 + 5 * 2 + 2 + 2)  # boxes; lateral, subnet, top-down, P6/P7 arrows


def test_precision_recall_figure_draws_the_curve_and_the_area_it_averages():
    recall = torch.tensor([0.25, 0.5, 0.5, 0.75])
    precision = torch.tensor([1.0, 1.0, 2 / 3, 0.75])
    levels = torch.linspace(0, 1, 5)
    interpolated = torch.tensor([1.0, 1.0, 1.0, 0.75, 0.0])  # best precision at or beyond each level
    fig = plots.precision_recall_figure(recall, precision, levels, interpolated, title="toy")
    (ax,) = fig.axes
    assert ax.get_title() == "toy" and "recall" in ax.get_xlabel() and "precision" in ax.get_ylabel()
    step, points = ax.get_lines()
    assert np.allclose(step.get_ydata(), interpolated) and np.allclose(points.get_xdata(), recall)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("0.750" in label for label in labels)  # AP = the mean of the samples: 3.75 / 5


def test_ablations_figure_joins_each_seed_down_its_group():
    rows = [{"name": "a1", "group": "A", "ap": [0.5, 0.6, 0.7], "paper": 30.0, "diverged": 0},
            {"name": "a2", "group": "A", "ap": [0.4, 0.8, 0.6], "paper": 31.0, "diverged": 0},
            {"name": "b1", "group": "B", "ap": [0.2, 0.3], "paper": None, "diverged": 1}]
    fig = plots.ablations_figure(rows, title="t")
    ours, paper = fig.axes
    joins = [line for line in ours.get_lines() if line.get_linestyle() == "-"]
    assert len(joins) == 3  # group A: 3 seeds over 2 rows; group B has one row, nothing to join
    np.testing.assert_allclose(joins[1].get_xdata(), [60, 80])  # seed 1: row a1 then a2
    np.testing.assert_allclose(joins[1].get_ydata(), [2, 1])
    assert "one seed, joined down its group" in [t.get_text() for t in fig.legends[0].get_texts()]
