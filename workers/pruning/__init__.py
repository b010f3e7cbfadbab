"""Pruning rules for sweeps: plain Python, no torch and no bus, replayable on fixed curves.

- `reports`: a trial's Report at one epoch, a rule's Decision, comparing values under a mode.
- `rule`: the Rule base: bus-order decisions, stops that stand.
- `rungs`: the rung ladder r * eta**k and the values recorded at a rung.
- `asha`, `median`, `hyperband`: the rules, one module each, each with its exact decision.
- `history`: a sweep's reports fed to a rule in bus order up to a watermark.

docs/sweeps.md ("Pruning rules") sets each rule beside Ray Tune's, Optuna's and W&B's.
"""

from __future__ import annotations

from typing import Any

from workers.pruning.asha import Asha
from workers.pruning.history import SweepHistory
from workers.pruning.hyperband import Hyperband
from workers.pruning.median import Median
from workers.pruning.reports import Decision, Report
from workers.pruning.rule import Rule

RULES: dict[str, type[Rule]] = {"asha": Asha, "median": Median, "hyperband": Hyperband}
# The options each rule takes (beyond metric and mode); any other one given is a mistake.
RULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "asha": ("min_resource", "reduction_factor", "max_resource"),
    "median": ("min_resource", "min_trials"),
    "hyperband": ("min_resource", "reduction_factor", "max_resource"),
}

__all__ = [
    "RULES",
    "RULE_OPTIONS",
    "Asha",
    "Decision",
    "Hyperband",
    "Median",
    "Report",
    "Rule",
    "SweepHistory",
    "make_rule",
]


def make_rule(name: str, *, sweep: str, metric: str, mode: str, **options: Any) -> Rule:
    """The rule `name` with the given options (None: the rule's default).

    ValueError names an unknown rule or an option the rule does not take.
    """
    if name not in RULES:
        raise ValueError(f"unknown pruning rule {name!r}: use one of {', '.join(RULES)}")
    given = {key: value for key, value in options.items() if value is not None}
    extra = sorted(set(given) - set(RULE_OPTIONS[name]))
    if extra:
        raise ValueError(
            f"the {name} rule takes no {', '.join(extra)} (its options: "
            f"{', '.join(RULE_OPTIONS[name])})"
        )
    if name == "hyperband":
        given["sweep"] = sweep
    return RULES[name](metric=metric, mode=mode, **given)
