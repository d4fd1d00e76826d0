"""Uncertainty of evaluation numbers: seeded bootstrap intervals over test prompts, and paired tests.

Every evaluation number here is a mean over test prompts of a per-prompt value: a score, a win (1, 0.5 for a
tie, 0), a correct preference (1 or 0), a violation (1 or 0). Resampling the prompts with replacement gives
the spread a different draw of prompts would show (the percentile bootstrap). Two models answered the same
prompts, so they are compared pairwise: the per-prompt differences are resampled together, which cancels the
prompts' own difficulty out of the comparison. Pure Python: a few hundred prompts and a thousand resamples
take milliseconds. Seeded, so the same inputs give the same interval on every machine.
"""

import math
import random
import statistics


def resample_means(values, n_resamples, seed):
    """The mean of each of n_resamples bootstrap resamples of values (sorted)."""
    rng, n = random.Random(seed), len(values)
    return sorted(math.fsum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))


def percentile(sorted_values, q):
    """The q-quantile (0..1) of sorted values, linearly interpolated."""
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def bootstrap_ci(values, level=0.95, n_resamples=1000, seed=0):
    """[lo, hi]: the percentile bootstrap interval of mean(values) at `level`; None for no values. A constant
    sample gives [c, c]: every resample has the same mean."""
    if not values:
        return None
    means = resample_means(list(values), n_resamples, seed)
    tail = (1 - level) / 2
    return [percentile(means, tail), percentile(means, 1 - tail)]


def paired_test(a, b, level=0.95, n_resamples=1000, seed=0):
    """Is mean(a) different from mean(b), a[i] and b[i] being two models' values on prompt i?

    Returns {"diff": mean(a - b), "ci": [lo, hi] of that difference (paired bootstrap), "p": two-sided
    bootstrap p-value, "significant": whether the interval excludes 0}. The p-value is the share of resampled
    differences, centred on 0 (the null hypothesis of no difference), at least as far from 0 as the observed
    one; identical models give diff 0, ci [0, 0], p 1."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_test needs two samples of one non-zero length, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    observed = math.fsum(diffs) / len(diffs)
    means = resample_means(diffs, n_resamples, seed)
    tail = (1 - level) / 2
    ci = [percentile(means, tail), percentile(means, 1 - tail)]
    if all(d == diffs[0] for d in diffs):  # no spread: the difference is what it is, every time
        p = 1.0 if observed == 0 else 0.0
    else:
        p = sum(abs(m - observed) >= abs(observed) - 1e-12 for m in means) / n_resamples
    return {"diff": observed, "ci": ci, "p": p, "significant": not ci[0] <= 0 <= ci[1]}


def mean(values):
    return statistics.fmean(values) if values else None
