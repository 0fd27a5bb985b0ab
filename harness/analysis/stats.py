"""Statistics for seed noise that is heavy-tailed: what a report may claim from a handful of seeds.

Final losses over seeds are not Gaussian here: at 16 blocks a seed that spikes early can end 0.3
above the others (results/lr_seeds_low), and pairing by seed does not help (the variants' losses
correlate with no consistent sign across seeds). So a comparison of a configuration with its
reference reports, beside the difference in means and Welch's t-test:

    Mann-Whitney U     a rank test: one outlying seed moves it by one rank, not by its size
    bootstrap CI       95% percentile interval of the difference in medians (scipy.stats.bootstrap,
                       resampling each side's seeds independently, a fixed random seed so that a
                       report is reproducible)
    Holm-Bonferroni    the p-values of all comparisons of one report adjusted together: ten
                       comparisons at 0.05 find one "difference" in two reports by chance alone
    power              seeds per configuration that a two-sided t-test at alpha = 0.05 needs for
                       80% power to detect a given gap at the measured spread (noncentral t)

Every test is scipy's; Holm's step-down adjustment is the only arithmetic done here (scipy has
no Holm). `check_poolable` refuses to treat runs whose settings differ in anything but the seed
as one configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.core.errors import UserError

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
PAPER_GAP = 0.02  # the size of the mHC paper's loss gaps (27B: mHC -0.021 vs the baseline; Table 1: -0.022 to -0.027)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v == v and not math.isinf(v)]


@dataclass
class Comparison:
    """One configuration's final losses against its reference's."""

    delta_mean: float
    delta_median: float
    ci_low: float  # bootstrap 95% CI of the difference in medians
    ci_high: float
    welch_p: float
    rank_p: float  # Mann-Whitney U, two-sided
    holm_welch_p: float = math.nan  # welch_p and rank_p adjusted across the report's comparisons (adjust)
    holm_rank_p: float = math.nan

    @property
    def median_ci_excludes_zero(self) -> bool:
        return self.ci_low == self.ci_low and (self.ci_low > 0 or self.ci_high < 0)


def compare(values, reference) -> Comparison:
    """values vs reference (each a list of per-seed final losses; NaN for a run without one)."""
    import numpy as np
    from scipy import stats

    a, b = _finite(values), _finite(reference)
    if not a or not b:
        return Comparison(*[math.nan] * 6)
    delta_mean = float(np.mean(a) - np.mean(b))
    delta_median = float(np.median(a) - np.median(b))
    if len(a) < 2 or len(b) < 2:
        return Comparison(delta_mean, delta_median, *[math.nan] * 4)
    welch_p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    rank_p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    ci = stats.bootstrap((a, b), lambda x, y, axis=-1: np.median(x, axis=axis) - np.median(y, axis=axis),
                         n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", vectorized=True,
                         random_state=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
    return Comparison(delta_mean, delta_median, float(ci.low), float(ci.high), welch_p, rank_p)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted): the i-th smallest of m
    is multiplied by m - i, then made non-decreasing and capped at 1."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def adjust(comparisons: list[Comparison]) -> None:
    """Set each comparison's Holm-adjusted p-values, the Welch and the rank test's, each family
    adjusted across all the comparisons given (one report's)."""
    for c, w, r in zip(comparisons, holm([c.welch_p for c in comparisons]), holm([c.rank_p for c in comparisons])):
        c.holm_welch_p, c.holm_rank_p = w, r


def pooled_sd(groups) -> float:
    """Pooled standard deviation of several groups of per-seed values (NaN with no spread to measure)."""
    import numpy as np

    groups = [g for g in (_finite(x) for x in groups) if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return math.nan
    return float(math.sqrt(sum((len(g) - 1) * np.var(g, ddof=1) for g in groups) / dof))


def seeds_for_power(gap: float, sd: float, alpha: float = ALPHA, power: float = POWER, most: int = 100_000) -> float:
    """Seeds per configuration for a two-sided two-sample t-test to detect `gap` at spread `sd`
    with `power` (noncentral t); inf beyond `most`, NaN when the spread or gap is unknown."""
    from scipy import stats

    if not (gap == gap and sd == sd) or sd <= 0 or gap == 0:
        return math.nan
    effect = abs(gap) / sd

    def achieved(n: int) -> float:
        dof = 2 * n - 2
        t = stats.t.ppf(1 - alpha / 2, dof)
        ncp = effect * math.sqrt(n / 2)
        return float(stats.nct.sf(t, dof, ncp) + stats.nct.cdf(-t, dof, ncp))

    lo, hi = 2, 2
    while achieved(hi) < power:
        if hi >= most:
            return math.inf
        lo, hi = hi, min(most, hi * 2)
    while lo < hi:  # the smallest n with enough power
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if achieved(mid) < power else (lo, mid)
    return float(lo)


def check_poolable(settings: list[dict], names: list[str]) -> None:
    """Refuse to pool runs as one configuration unless their settings (config minus seed and
    execution fields, harness.analysis.table._setting) are equal: one line naming a differing field."""
    first = settings[0]
    for s, name in zip(settings[1:], names[1:]):
        differ = sorted(k for k in set(first) | set(s) if first.get(k) != s.get(k))
        if differ:
            k = differ[0]
            raise UserError(f"runs {names[0]} and {name} differ in {k} ({first.get(k)!r} vs {s.get(k)!r}): a report pools "
                            "only the seeds of one configuration" + (f" ({len(differ) - 1} more fields differ)" if len(differ) > 1 else ""))
