"""Exercises with feedback: the learner writes the piece a lesson taught, a check grades it.

``check_<name>(learner_fn)`` runs the learner's function on random inputs and edge cases
(large logits, no foreground, all ignored, ties, exact thresholds) next to a reference —
the kit's own code where it has one — and answers with a :class:`Feedback`: correct, or
*which* mistake. Known mistakes are recognised by comparing the learner's results with
those of a known-wrong variant, so each message names exactly what went wrong.

One module of checks per lesson (:mod:`.loss`, :mod:`.anchors`, :mod:`.prior` and :mod:`.boxes`, :mod:`.training`,
:mod:`.cdf`, :mod:`.ohem`, :mod:`.two_stage`) on the shared machinery of :mod:`.checking`;
worked solutions live in :mod:`fl_lab.exercises.solutions`.
"""

from .anchors import check_anchors_at, check_match
from .boxes import check_box_coding, check_nms
from .cdf import check_loss_cdf
from .checking import Feedback
from .loss import check_focal_loss, check_p_t_alpha_t
from .ohem import check_ohem_select
from .prior import check_prior_bias
from .training import check_normalised_loss
from .two_stage import check_sample_counts

__all__ = [
    "Feedback",
    "check_anchors_at",
    "check_box_coding",
    "check_focal_loss",
    "check_loss_cdf",
    "check_match",
    "check_nms",
    "check_normalised_loss",
    "check_ohem_select",
    "check_p_t_alpha_t",
    "check_prior_bias",
    "check_sample_counts",
]
