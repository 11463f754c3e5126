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

__all__ = ["FAILS", "HOLDS", "NOT_TESTED", "VERDICTS", "WITHIN_NOISE", "Claim", "SeedStats", "compare_seeds",
           "format_claims"]

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


def format_claims(claims: Sequence[Claim]) -> str:
    """One line per claim: its verdict and the numbers behind it."""
    return "\n".join(f"{c.text}: {c.verdict} — {c.detail}" for c in claims)
