"""The paper's findings as claims, and when seeded results bear one out.

A training result is one draw from a distribution: another seed (initial weights, data
order, flips) gives another AP. So a claim such as "FL beats α-CE" is judged on several
seeds: it *holds* when the mean difference exceeds ``margin`` (2) standard errors of that
difference, it *fails* when it is reversed by as much, and otherwise it is *within noise*.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["FAILS", "HOLDS", "NOT_TESTED", "VERDICTS", "WITHIN_NOISE", "Claim", "PairedDifference", "SeedStats",
           "compare_seeds", "format_claims", "paired_difference", "t_critical"]

HOLDS, FAILS, WITHIN_NOISE, NOT_TESTED = "holds", "does NOT hold", "within noise", "not tested"
VERDICTS = (HOLDS, FAILS, WITHIN_NOISE, NOT_TESTED)


@dataclass(frozen=True)
class Claim:
    """One of the paper's findings and what these results say of it: a verdict of :data:`VERDICTS`."""

    text: str
    verdict: str
    detail: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @classmethod
    def check(cls, text: str, condition: Optional[bool], detail: str) -> "Claim":
        """A claim decided by a deterministic test: holds if ``condition``, fails if not, None: not tested."""
        return cls(text, NOT_TESTED if condition is None else HOLDS if condition else FAILS, detail)


@dataclass(frozen=True)
class SeedStats:
    """One metric over seeds: the values, their mean, sample standard deviation and standard error."""

    values: tuple[float, ...]

    def __post_init__(self):
        if not self.values:
            raise ValueError("SeedStats needs at least one value")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0 for a single value."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def sem(self) -> float:
        """Standard error of the mean, std / √n."""
        return self.std / math.sqrt(self.n)

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """"mean ± std" (× ``scale``: AP is printed ×100, the paper's unit), with n when n ≠ 3."""
        text = f"{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f}"
        return text if self.n == 3 else f"{text} (n={self.n})"


def compare_seeds(text: str, a: Sequence[float], b: Sequence[float], margin: float = 2.0,
                  scale: float = 100.0, names: tuple[str, str] = ("", "")) -> Claim:
    """The claim "a beats b" judged on seeded values (higher is better).

    The difference of the means, d = mean(a) − mean(b), has standard error
    se = √(s_a²/n_a + s_b²/n_b) (Welch). The claim *holds* if d > margin·se, *fails* if
    d < −margin·se, and is *within noise* otherwise. With fewer than two values on a side
    the noise is unknown and the claim is *not tested*.
    """
    sa, sb = SeedStats(tuple(a)), SeedStats(tuple(b))
    na, nb = names
    numbers = f"{na}{' ' if na else ''}{sa.format(scale)} vs {nb}{' ' if nb else ''}{sb.format(scale)}"
    if sa.n < 2 or sb.n < 2:
        return Claim(text, NOT_TESTED, f"{numbers}: one seed gives no estimate of the noise")
    diff, se = sa.mean - sb.mean, math.sqrt(sa.sem ** 2 + sb.sem ** 2)
    verdict = HOLDS if diff > margin * se else FAILS if diff < -margin * se else WITHIN_NOISE
    return Claim(text, verdict, f"{numbers}; difference {scale * diff:+.1f} ± {scale * se:.1f} (standard error)")


# Two-sided 95 % critical values of Student's t for 1-30 degrees of freedom (any statistics table).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_critical(df: int) -> float:
    """The two-sided 95 % critical value of Student's t with ``df`` degrees of freedom (≥ 1);
    beyond 30, the normal value with three Cornish-Fisher terms (error < 1e-4 there)."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class PairedDifference:
    """a − b over runs that share their seeds: the mean per-seed difference, its standard error
    and the two-sided 95 % t interval (n − 1 degrees of freedom)."""

    differences: tuple[float, ...]
    mean: float
    sem: float
    low: float
    high: float


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Compare two arms run on the same seeds, seed by seed (``a[i]`` and ``b[i]`` share seed i):
    the seed's data, weights and validation set cancel out of each difference."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired values need the same number of seeds, at least 2, got {len(a)} and {len(b)}")
    d = SeedStats(tuple(x - y for x, y in zip(a, b)))
    half = t_critical(d.n - 1) * d.sem
    return PairedDifference(d.values, d.mean, d.sem, d.mean - half, d.mean + half)


def format_claims(claims: Sequence[Claim]) -> str:
    """One line per claim: its verdict and the numbers behind it."""
    return "\n".join(f"{c.text}: {c.verdict} — {c.detail}" for c in claims)
