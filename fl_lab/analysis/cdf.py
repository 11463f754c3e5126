"""The loss CDF of the paper's Figure 4 (§5.1, lesson 05): sample a trained model's positives and
negatives, and see how their focal loss is spread for several γ."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.transforms import collate
from ..loss import BACKGROUND, focal_loss
from ..torch_utils import eval_mode
from .claims import Claim

__all__ = ["CDF_KINDS", "HARDEST_FRACTIONS", "LossCDF", "Reservoir", "cumulative_loss", "hardest_share", "loss_cdf",
           "paper_findings"]

CDF_KINDS = ("positives", "negatives")
"""The two sets of Figure 4: foreground anchors' true class, and every class of background anchors."""

HARDEST_FRACTIONS = (0.2, 0.05, 0.01)
"""The headline fractions :meth:`LossCDF.shares` reports: the hardest 20%, 5% and 1% of the samples."""


class Reservoir:
    """A uniform random sample of at most ``capacity`` values from a stream (without replacement).

    Each value gets a uniform random key and the ``capacity`` smallest keys are kept
    ("bottom-k" sampling): every subset of the stream is equally likely, whatever the chunk
    sizes, and memory stays O(capacity) -- 10^7 negatives fit in 40 MB of float32.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"a reservoir needs capacity >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0  # values offered so far
        self._gen = torch.Generator().manual_seed(seed)
        self._values = torch.empty(0)
        self._keys = torch.empty(0)

    def add(self, values: Tensor) -> None:
        """Offer a chunk of values (any shape; flattened, moved to the CPU as float32)."""
        values = values.detach().reshape(-1).float().cpu()
        self.seen += values.numel()
        keys = torch.rand(values.numel(), generator=self._gen)
        if self._keys.numel() == self.capacity:  # full: only keys below the current largest can get in
            fits = keys < self._keys.max()
            values, keys = values[fits], keys[fits]
        values, keys = torch.cat([self._values, values]), torch.cat([self._keys, keys])
        if keys.numel() > self.capacity:
            keys, index = torch.topk(keys, self.capacity, largest=False, sorted=False)
            values = values[index]
        self._values, self._keys = values, keys

    @property
    def values(self) -> Tensor:
        """The sample, (min(seen, capacity),) float32, in no particular order."""
        return self._values


def cumulative_loss(losses: Tensor) -> Tensor:
    """Figure 4's curve: losses sorted from lowest to highest, normalised to sum to 1, cumulated.

    losses: (n,) ≥ 0. Returns (n,) float64, non-decreasing, ending at 1 (all zeros if the
    total loss is 0). Plotted against ``(i + 1) / n`` it is the loss CDF.
    """
    total = losses.double().sum()
    ordered = torch.sort(losses.double()).values
    return ordered.cumsum(0) / total if total > 0 else torch.zeros_like(ordered)


def hardest_share(losses: Tensor, fraction: float) -> float:
    """Share of the total loss held by the hardest ``fraction`` of the samples (the ⌈fraction·n⌉ largest)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    n = losses.numel()
    total = float(losses.double().sum())
    if n == 0 or total == 0:
        return 0.0
    k = math.ceil(fraction * n - 1e-9)  # the tolerance keeps 0.2 · 10 at 2, not 3
    return float(torch.topk(losses.double(), k).values.sum()) / total


@dataclass
class LossCDF:
    """Samples of Figure 4 and what they give for any γ.

    Each sample is stored as its logit towards the right answer, x_t (p_t = σ(x_t)), rather
    than p_t: an easy negative at p = 1e-9 has p_t = 1 in float32 but its loss stays exact.

    positives: (P,) x_t of the true-class entry of foreground anchors;
    negatives: (N,) x_t of every class entry of background anchors (ignored anchors excluded);
    gammas: the γ the lesson draws; seen_*: counts before subsampling; num_images: images run.
    The samples are fixed once made: curves are computed once per (kind, γ) and kept.
    """

    positives: Tensor
    negatives: Tensor
    gammas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    seen_positives: int = 0
    seen_negatives: int = 0
    num_images: int = 0
    _curves: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_probabilities(
        cls, positives: Tensor, negatives: Tensor, gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0)
    ) -> "LossCDF":
        """From p_t samples strictly inside (0, 1): a positive's p, a negative's 1 - p."""
        for name, p in (("positives", positives), ("negatives", negatives)):
            if p.numel() and not bool(((p > 0) & (p < 1)).all()):
                raise ValueError(f"{name}: p_t must lie strictly inside (0, 1)")
        pos, neg = torch.logit(positives.double()), torch.logit(negatives.double())
        return cls(pos, neg, tuple(float(g) for g in gammas), pos.numel(), neg.numel())

    def losses(self, kind: str, gamma: float) -> Tensor:
        """FL of each sample of ``kind`` at focusing ``gamma``, (n,) float64.

        α is left out: it multiplies a whole set by one constant, which the normalisation removes.
        """
        if kind not in CDF_KINDS:
            raise ValueError(f"kind must be one of {CDF_KINDS}, got {kind!r}")
        x_t = (self.positives if kind == "positives" else self.negatives).double().unsqueeze(1)
        return focal_loss(x_t, torch.ones_like(x_t), gamma, alpha=None, reduction="none").squeeze(1)

    def curve(self, kind: str, gamma: float, points: int = 2001) -> tuple[Tensor, Tensor]:
        """(fraction of samples, cumulative normalised loss) at ``points`` evenly spaced fractions in [0, 1]."""
        key = (kind, float(gamma), points)
        if key not in self._curves:  # a slider redraws the same γ = 0 curves at every move: sort 10⁶ samples once
            cdf = cumulative_loss(self.losses(kind, gamma))
            fraction = torch.linspace(0, 1, points, dtype=torch.float64)
            # The first k samples (fraction k / n) hold cdf[k - 1]; 0 samples hold 0.
            index = (fraction * cdf.numel()).round().long()
            self._curves[key] = (fraction, torch.cat([cdf.new_zeros(1), cdf])[index] if cdf.numel()
                                 else torch.zeros_like(fraction))
        return self._curves[key]

    def shares(self, fractions: Sequence[float] = HARDEST_FRACTIONS) -> dict[tuple[str, float], dict[float, float]]:
        """{(kind, γ): {fraction: share of the loss held by that hardest fraction}} for each γ."""
        return {
            (kind, gamma): {f: hardest_share(losses, f) for f in fractions}
            for kind in CDF_KINDS
            for gamma in self.gammas
            for losses in [self.losses(kind, gamma)]
        }

    def table(self, fractions: Sequence[float] = HARDEST_FRACTIONS) -> str:
        """A text table of :meth:`shares`: one row per γ, columns per kind and fraction."""
        shares = self.shares(fractions)
        cols = [(kind, f) for kind in CDF_KINDS for f in fractions]
        header = f"{'γ':>5}" + "".join(f"{f'{kind[:3]}. top {f:.0%}':>15}" for kind, f in cols)
        lines = ["share of the loss held by the hardest samples", header, "-" * len(header)]
        for gamma in self.gammas:
            lines.append(f"{gamma:>5g}" + "".join(f"{shares[(kind, gamma)][f]:>15.1%}" for kind, f in cols))
        return "\n".join(lines)


@torch.no_grad()
def loss_cdf(
    model: torch.nn.Module,
    dataset: Dataset,
    gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    max_negatives: int = 1_000_000,
    max_positives: int = 100_000,
    batch_size: int = 8,
    device: Union[None, str, torch.device] = None,
    seed: int = 0,
    progress: bool = True,
) -> LossCDF:
    """Sample positives and negatives from ``model`` on ``dataset`` for Figure 4 (paper §5.1).

    Runs the model (a :class:`fl_lab.model.RetinaNet`, eval mode) over every image, assigns
    anchors with its own matcher, and streams the x_t of positives (each foreground anchor's
    true class) and negatives (every class of each background anchor; ignored anchors are
    left out) into uniform reservoirs of ``max_positives`` and ``max_negatives``. Memory stays
    bounded by those sizes and one batch, whatever the number of images.
    """
    if max_negatives < 1 or max_positives < 1 or batch_size < 1:
        raise ValueError(
            "max_negatives, max_positives and batch_size must be >= 1, "
            f"got {max_negatives}, {max_positives}, {batch_size}"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    positives, negatives = Reservoir(max_positives, seed), Reservoir(max_negatives, seed + 1)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    with eval_mode(model, device):
        for batch in tqdm(loader, desc="loss CDF", disable=not progress, mininterval=2):
            batch = batch.to(device)
            output = model(batch.images)
            labels = model.assign(output, batch.targets).labels  # (B, A)
            logits = output.cls_logits.float()  # (B, A, K)
            foreground = labels >= 0
            positives.add(logits[foreground].gather(1, labels[foreground].unsqueeze(1)))  # x_t = x
            negatives.add(-logits[labels == BACKGROUND])  # x_t = -x for every class
    return LossCDF(positives.values, negatives.values, tuple(float(g) for g in gammas),
                   positives.seen, negatives.seen, len(dataset))


def paper_findings(result: LossCDF) -> list[Claim]:
    """The findings of the paper's Figure 4 (§5.1), checked on ``result``.

    The paper says them in words; the kit reads them as these thresholds on the share of the
    loss held by the hardest samples (top 20% unless stated):

    1. positives, γ = 2: the hardest 20% hold about half of the loss -- a share in [0.35, 0.65];
    2. positives: γ changes the curve little -- top-20% shares at γ = 0 and 2 within 0.15;
    3. negatives, γ = 0: the curve looks like the positives' -- top-20% shares within 0.15;
    4. negatives, γ = 2: almost all of the loss sits in a small fraction -- the hardest 5% hold ≥ 80%.
    """
    pos0, pos2 = (hardest_share(result.losses("positives", g), 0.2) for g in (0.0, 2.0))
    neg0 = hardest_share(result.losses("negatives", 0.0), 0.2)
    neg2 = {f: hardest_share(result.losses("negatives", 2.0), f) for f in (0.05, 0.01)}
    return [
        Claim.check("positives, γ = 2: the hardest 20% hold about half of the loss", 0.35 <= pos2 <= 0.65,
              f"they hold {pos2:.0%}"),
        Claim.check("positives: γ changes the curve little", abs(pos2 - pos0) <= 0.15,
              f"hardest 20% hold {pos0:.0%} at γ = 0, {pos2:.0%} at γ = 2"),
        Claim.check("negatives, γ = 0: the curve is like the positives'", abs(neg0 - pos0) <= 0.15,
              f"hardest 20% hold {neg0:.0%} of the negatives' loss, {pos0:.0%} of the positives'"),
        Claim.check("negatives, γ = 2: almost all the loss sits in a few hard negatives", neg2[0.05] >= 0.8,
              f"the hardest 5% hold {neg2[0.05]:.1%}, the hardest 1% {neg2[0.01]:.1%}"),
    ]
