"""Measuring what the paper argues: where the loss goes, which regime a dataset trains in,
the loss CDF of Figure 4, and whether results bear out a claim.

* :mod:`.shares` — a simulated anchor batch and the share of its loss each kind of example
  holds (lesson 01); anchor assignments counted per level (lesson 02).
* :mod:`.coverage` — anchor coverage of a dataset's objects and its negative : positive
  imbalance (lessons 02, 06).
* :mod:`.share_monitor` — the same shares measured on the real model while it trains (lesson 04).
* :mod:`.cdf` — Figure 4's loss CDFs from a trained model (lesson 05).
* :mod:`.claims` — the paper's findings as claims; seeded results judged against their noise.
"""

from .cdf import (
                     CDF_KINDS,
                     HARDEST_FRACTIONS,
                     LossCDF,
                     Reservoir,
                     cumulative_loss,
                     hardest_share,
                     loss_cdf,
                     paper_findings,
)
from .claims import (
                     FAILS,
                     HOLDS,
                     NOT_TESTED,
                     VERDICTS,
                     WITHIN_NOISE,
                     Claim,
                     PairedDifference,
                     SeedStats,
                     compare_seeds,
                     format_claims,
                     paired_difference,
                     t_critical,
)
from .coverage import AnchorCoverage, anchor_coverage
from .share_monitor import LossShareMonitor
from .shares import (
                     ASSIGNMENT_KINDS,
                     GROUPS,
                     PRIOR_LOGIT,
                     GroupLoss,
                     LossSetting,
                     compare_losses,
                     count_assignments,
                     format_shares,
                     loss_shares,
                     simulate_anchor_batch,
)

__all__ = [
    "ASSIGNMENT_KINDS", "CDF_KINDS", "FAILS", "GROUPS", "HARDEST_FRACTIONS", "HOLDS", "NOT_TESTED", "PRIOR_LOGIT",
    "VERDICTS", "WITHIN_NOISE", "AnchorCoverage", "Claim", "GroupLoss", "LossCDF", "LossSetting", "LossShareMonitor",
    "PairedDifference", "Reservoir", "SeedStats", "anchor_coverage", "compare_losses", "compare_seeds",
    "count_assignments", "cumulative_loss", "format_claims", "format_shares", "hardest_share", "loss_cdf",
    "loss_shares", "paired_difference", "paper_findings", "simulate_anchor_batch", "t_critical",
]
