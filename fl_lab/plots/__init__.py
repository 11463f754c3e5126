"""Figures of the lessons: plain arguments in, a ``matplotlib.figure.Figure`` out.

Figures are built with the object-oriented API (no pyplot state), so tests can call these
functions without a display and a notebook shows each figure exactly once. Every figure
has a title, axis labels and a legend.
"""

from .ablations import ablations_figure
from .anchors import (
    anchor_grid_figure,
    assignment_counts_figure,
    assignment_figure,
    cell_anchors_figure,
    coverage_figure,
    ground_truth_figure,
    pyramid_figure,
)
from .architecture import architecture_figure
from .cdf import cdf_figure
from .compare import figure2
from .detections import detections_figure, precision_recall_figure
from .loss import (
    figure1,
    focal_star_figure,
    gradient_figure,
    imbalance_figure,
    loss_explorer_figure,
    loss_share_figure,
)
from .model import dataset_figure, training_curves_figure, training_log_figure
from .study import gap_figure

__all__ = [
    "architecture_figure",
    "ablations_figure",
    "anchor_grid_figure",
    "assignment_counts_figure",
    "assignment_figure",
    "cdf_figure",
    "cell_anchors_figure",
    "coverage_figure",
    "dataset_figure",
    "detections_figure",
    "figure1",
    "figure2",
    "focal_star_figure",
    "gap_figure",
    "gradient_figure",
    "ground_truth_figure",
    "imbalance_figure",
    "loss_explorer_figure",
    "loss_share_figure",
    "precision_recall_figure",
    "pyramid_figure",
    "training_curves_figure",
    "training_log_figure",
]
