"""The paper's findings as claims, and when seeded results bear one out.

A training result is one draw from a distribution: another seed (initial weights, data
order, flips, the validation set) gives another AP. So a claim such as "FL beats α-CE" is
judged on several seeds. Arms trained on the same seeds are compared seed by seed: the seed's
data and weights cancel out of each difference. The claim *holds* when the two-sided 95 %
t interval of the mean difference lies above 0, *fails* when it lies below, and is *within
noise* when it contains 0. Arms on different seeds are compared by Welch's interval instead.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence, Union

__all__ = ["FAILS", "FLOOR", "HOLDS", "NOT_TESTED", "VERDICTS", "WITHIN_NOISE", "Claim", "PairedDifference",
           "SeedStats", "compare_seeds", "format_claims", "paired_difference", "t_critical"]

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
    """One metric over seeds: the values, their mean, sample standard deviation and standard error;
    ``seeds`` (when known) names the seed of each value, so that arms run on the same seeds pair up."""

    values: tuple[float, ...]
    seeds: Optional[tuple[int, ...]] = None

    def __post_init__(self):
        if not self.values:
            raise ValueError("SeedStats needs at least one value")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if self.seeds is not None:
            object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
            if len(self.seeds) != len(self.values):
                raise ValueError(f"got {len(self.seeds)} seeds for {len(self.values)} values")

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
        """"mean ± std" (× ``scale``: AP is printed ×100, the paper's unit), with n when n ≠ 3; one
        value alone, "value (1 seed)": a single run has no spread to show."""
        if self.n == 1:
            return f"{scale * self.mean:.{digits}f} (1 seed)"
        text = f"{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f}"
        return text if self.n == 3 else f"{text} (n={self.n})"


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
    d = SeedStats(tuple(x - y for x, y in zip(a, b, strict=True)))
    half = t_critical(d.n - 1) * d.sem
    return PairedDifference(d.values, d.mean, d.sem, d.mean - half, d.mean + half)


#: An arm whose metric never exceeds this does not detect: its zeros are a floor, not a measurement.
FLOOR = 1e-3


def compare_seeds(text: str, a: Union[SeedStats, Sequence[float]], b: Union[SeedStats, Sequence[float]],
                  scale: float = 100.0, names: tuple[str, str] = ("", ""), floor: Optional[float] = FLOOR) -> Claim:
    """The claim "a beats b" judged on seeded values (higher is better).

    When ``a`` and ``b`` are :class:`SeedStats` over the same seeds, the claim is judged on the
    per-seed differences (:func:`paired_difference`: mean, standard error, 95 % t interval with
    n − 1 degrees of freedom); otherwise on the difference of the means with Welch's standard
    error and degrees of freedom. It *holds* when the interval lies above 0, *fails* when it lies
    below 0, and is *within noise* when it contains 0. With fewer than two values on a side it is
    *not tested*, and so it is when neither arm ever exceeds ``floor`` (neither detects; None: values
    that are not metrics, such as differences, which have no floor).
    """
    sa, sb = (x if isinstance(x, SeedStats) else SeedStats(tuple(x)) for x in (a, b))
    na, nb = names
    numbers = f"{na}{' ' if na else ''}{sa.format(scale)} vs {nb}{' ' if nb else ''}{sb.format(scale)}"
    if sa.n < 2 or sb.n < 2:
        return Claim(text, NOT_TESTED, f"{numbers}: one seed gives no estimate of the noise")
    silent = [name or side for name, side, s in ((na, "the first", sa), (nb, "the second", sb))
              if floor is not None and max(s.values) <= floor]
    if len(silent) == 2:
        return Claim(text, NOT_TESTED, f"{numbers}: neither detects anything in any seed")
    if sa.seeds is not None and sa.seeds == sb.seeds:
        d = paired_difference(sa.values, sb.values)
        mean, se, low, high, how = d.mean, d.sem, d.low, d.high, f"paired over {sa.n} seeds"
    else:
        mean, va, vb = sa.mean - sb.mean, sa.sem ** 2, sb.sem ** 2
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1)) if se > 0 else sa.n + sb.n - 2
        df = max(1, math.floor(df + 1e-9))  # Welch–Satterthwaite, rounded down: the wider interval
        half = t_critical(df) * se
        low, high, how = mean - half, mean + half, f"Welch, {df} df"
    verdict = HOLDS if low > 0 else FAILS if high < 0 else WITHIN_NOISE
    note = f"; {silent[0]} detects nothing in any seed" if silent else ""
    return Claim(text, verdict, f"{numbers}; difference {scale * mean:+.1f} ± {scale * se:.1f} (SE), 95 % interval "
                                f"[{scale * low:+.1f}, {scale * high:+.1f}] ({how}){note}")


def format_claims(claims: Sequence[Claim]) -> str:
    """One line per claim: its verdict and the numbers behind it."""
    return "\n".join(f"{c.text}: {c.verdict} — {c.detail}" for c in claims)
