"""Figures over seeds: mean, sample standard deviation, gains paired by seed."""

import math


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def seed_sd(values):
    """The sample standard deviation (n - 1 in the denominator) of per-seed values."""
    values = list(values)
    if len(values) < 2:
        raise ValueError("a standard deviation over seeds needs at least two seeds")
    centre = mean(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def seed_rows(arm):
    """The rows of an arm's table as (label, value_of): one per seed, then, with
    several seeds, their mean and standard deviation. ``value_of(score)`` gives the
    row's value of ``score(seed entry)``."""
    seeds = arm["seeds"]
    rows = [(str(s["seed"]), lambda score, s=s: score(s)) for s in seeds]
    if len(seeds) > 1:
        rows.append(("mean", lambda score: mean(map(score, seeds))))
        rows.append(("sd", lambda score: seed_sd(map(score, seeds))))
    return rows


def paired_gain(results, score, arm="rdrop", baseline="baseline"):
    """``score(seed entry)`` of ``arm`` minus ``baseline``'s, paired by seed: the
    per-seed differences, their mean, standard deviation and the standard error
    of the mean (sd / sqrt(n)); sd and se are None for a single seed."""
    runs = results["runs"]
    base = {s["seed"]: score(s) for s in runs[baseline]["seeds"]}
    diffs = {s["seed"]: score(s) - base[s["seed"]] for s in runs[arm]["seeds"] if s["seed"] in base}
    if not diffs:
        raise ValueError(f"{arm} and {baseline} have no seed in common")
    sd = seed_sd(diffs.values()) if len(diffs) > 1 else None
    return {
        "per_seed": {str(seed): round(d, 4) for seed, d in diffs.items()},
        "mean": round(mean(diffs.values()), 4),
        "sd": None if sd is None else round(sd, 4),
        "se": None if sd is None else round(sd / math.sqrt(len(diffs)), 4),
        "seeds": len(diffs),
    }


def describe_gain(gain):
    """``+1.23`` for one seed; ``+1.23 (3 seeds; sd 0.40, standard error 0.23)`` for several."""
    text = f"{gain['mean']:+.2f}"
    if gain["sd"] is not None:
        text += f" ({gain['seeds']} seeds; sd {gain['sd']:.2f}, standard error {gain['se']:.2f})"
    return text
