"""fl_lab.widgets: sliders that redraw on release and are wired to the figure functions."""

import ipywidgets as W
import pytest

from fl_lab import analysis, plots, widgets


def sliders_of(box: W.VBox) -> dict[str, W.FloatSlider]:
    controls, output = box.children
    assert isinstance(output, W.Output)
    return {s.description: s for s in controls.children}


@pytest.fixture
def recorded(monkeypatch):
    """Record the arguments each figure function is called with."""
    calls = []
    for name in ("loss_explorer_figure", "imbalance_figure"):
        real = getattr(plots, name)

        def spy(*args, _real=real, _name=name):
            calls.append((_name, args))
            return _real(*args)

        monkeypatch.setattr(plots, name, spy)
    return calls


def test_focal_loss_explorer_redraws_with_slider_values(recorded):
    box = widgets.focal_loss_explorer(gamma=2.0, alpha=0.25)
    sliders = sliders_of(box)
    assert set(sliders) == {"γ", "α"}
    assert all(not s.continuous_update for s in sliders.values())
    assert (sliders["γ"].min, sliders["γ"].max) == (0.0, 5.0) and (sliders["α"].min, sliders["α"].max) == (0.0, 1.0)
    assert recorded[-1] == ("loss_explorer_figure", (2.0, 0.25))
    sliders["γ"].value = 0.5
    assert recorded[-1] == ("loss_explorer_figure", (0.5, 0.25))
    sliders["α"].value = 0.75
    assert recorded[-1] == ("loss_explorer_figure", (0.5, 0.75))


def test_imbalance_explorer_recomputes_shares(recorded):
    logits, target = analysis.simulate_anchor_batch(num_anchors=1000, num_positives=5)
    box = widgets.imbalance_explorer(logits, target, gamma=2.0, alpha=0.25)
    sliders = sliders_of(box)
    assert all(not s.continuous_update for s in sliders.values())
    first = recorded[-1][1][0]
    assert list(first) == ["CE", "α-balanced CE (α = 0.25)", "FL (γ = 2, α = 0.25)"]
    sliders["γ"].value = 1.0
    second = recorded[-1][1][0]
    assert list(second)[-1] == "FL (γ = 1, α = 0.25)"
    assert second["FL (γ = 1, α = 0.25)"] != first["FL (γ = 2, α = 0.25)"]


def test_anchor_explorer_redraws_the_chosen_shape(monkeypatch):
    import numpy as np

    from fl_lab.anchors import AnchorGenerator

    calls = []
    monkeypatch.setattr(plots, "anchor_grid_figure", lambda *args: calls.append(args[2:]) or plots.figure1())
    box = widgets.anchor_explorer(np.zeros((64, 64, 3), dtype=np.uint8), AnchorGenerator())
    level, ratio, scale = box.children[0].children
    assert calls[-1] == (0, 0, 0)
    level.value, ratio.value, scale.value = 4, 2, 1
    assert calls[-1] == (4, 2, 1)
    assert [label for label, _ in level.options] == ["P3", "P4", "P5", "P6", "P7"]


def test_matching_explorer_follows_thresholds(monkeypatch, capsys):
    import numpy as np
    import torch

    from fl_lab.anchors import AnchorGenerator

    calls = []
    monkeypatch.setattr(plots, "assignment_figure", lambda *args: calls.append(args) or plots.figure1())
    gt = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    box = widgets.matching_explorer(np.zeros((64, 64, 3), dtype=np.uint8), AnchorGenerator(), gt)
    fg, bg = sliders_of(box).values()
    assert not fg.continuous_update and not bg.continuous_update
    labels_default = calls[-1][3]
    bg.value = 0.05
    labels_low_bg = calls[-1][3]
    assert int((labels_low_bg == -2).sum()) > int((labels_default == -2).sum())  # a wider ignore band
    n = len(calls)
    bg.value = 0.9  # above fg: refused with a message, nothing drawn
    assert len(calls) == n and "must not exceed" in capsys.readouterr().out


def test_cdf_explorer_redraws_the_chosen_gamma_and_sorts_each_curve_once(monkeypatch):
    import torch

    g = torch.Generator().manual_seed(0)
    result = analysis.LossCDF(positives=torch.randn(500, generator=g), negatives=torch.randn(5000, generator=g) + 4)
    drawn, sorted_sizes = [], []
    real_figure, real_cumulative = plots.cdf_figure, analysis.cumulative_loss
    monkeypatch.setattr(plots, "cdf_figure", lambda r, gammas: drawn.append(gammas) or real_figure(r, gammas=gammas))
    monkeypatch.setattr(analysis.cdf, "cumulative_loss",
                        lambda losses: sorted_sizes.append(losses.numel()) or real_cumulative(losses))
    slider, output = widgets.cdf_explorer(result, gamma=2.0).children
    assert isinstance(output, W.Output) and not slider.continuous_update and (slider.min, slider.max) == (0.0, 5.0)
    assert drawn == [(0.0, 2.0)]
    slider.value = 0.5
    assert drawn[-1] == (0.0, 0.5)
    assert sorted(sorted_sizes) == [500] * 3 + [5000] * 3  # γ = 0, 2 and 0.5 for each kind: the CE curves once
    slider.value = 2.0
    assert drawn[-1] == (0.0, 2.0) and len(sorted_sizes) == 6  # seen before: nothing sorted again
    assert result.curve("negatives", 0.5) is result.curve("negatives", 0.5)


def test_gradient_explorer_draws_ce_beside_the_sliders_gamma(monkeypatch):
    drawn = []
    real = plots.gradient_figure
    monkeypatch.setattr(plots, "gradient_figure", lambda gammas: drawn.append(tuple(gammas)) or real(gammas))
    slider, output = widgets.gradient_explorer(gamma=2.0).children
    assert isinstance(output, W.Output) and not slider.continuous_update and (slider.min, slider.max) == (0.0, 5.0)
    assert drawn == [(0.0, 2.0)]
    slider.value = 0.5
    assert drawn[-1] == (0.0, 0.5)
