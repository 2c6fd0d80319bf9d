"""The A/B statistics every comparison uses: variants run interleaved in
rounds (A B B' with the order rotating each round, so neither side always
goes first), medians and p10/p90 spreads, the ratio of medians, and the
built-in bridge measured twice (B and B') so that B'/B is the noise floor of
that very run. Nothing is compared against a constant."""

import math


def percentile(samples, q):
    """Linear interpolation between closest ranks (q in 0..100)."""
    xs = sorted(samples)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(samples):
    return percentile(samples, 50)


def summary(samples):
    """Median, p10, p90, p99, min, max and count of a list of numbers."""
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "median": median(samples),
        "p10": percentile(samples, 10),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
    }


def interleave(rounds, variants):
    """Runs each variant once per round, the order rotating every round.
    variants: {name: fn() -> seconds}. Returns {name: [seconds, ...]}."""
    names = list(variants)
    samples = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(variants[name]())
    return samples


def ratio(a, b):
    ma, mb = median(a), median(b)
    return None if not ma or not mb else ma / mb


def compare(rb, bb, bb2, ref="bb"):
    """rustbridge against a reference (BB; Docker's overlay across hosts),
    measured twice, with BB'/BB as the floor. Also the median of the
    per-round ratios (robust to drift across the run). The summaries are
    keyed rustbridge, ref and ref + "2"."""
    per_round = [x / y for x, y in zip(rb, bb) if y]
    return {
        "ratio": ratio(rb, bb),
        "floor": ratio(bb2, bb),
        "round_ratio_median": median(per_round) if per_round else None,
        "rustbridge": summary(rb),
        ref: summary(bb),
        ref + "2": summary(bb2),
    }


def verdict(value, goal, noise=0.0, higher_is_better=False):
    """'met', 'within noise' (misses the goal by less than the run's own
    BB-vs-BB spread) or 'not met'. value and goal are ratios or quantities in the
    same unit; noise is |floor - 1| for ratios."""
    if value is None:
        return "not measured"
    miss = goal - value if higher_is_better else value - goal
    if miss <= 0:
        return "met"
    if miss <= noise:
        return "within noise"
    return "not met"


def noise_of(floor):
    return abs(floor - 1) if floor else 0.0
