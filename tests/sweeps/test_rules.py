"""The pruning rules replayed on fixed learning curves, decisions worked out by hand.

Each curve is a list of reports in bus order: (trial, epoch, value), the i-th reported in
millisecond i unless said otherwise. The comment beside each report works its decision out from
the rule's definition (docs/sweeps.md, "Pruning rules"), not from the code.
"""

from __future__ import annotations

import math
import zlib

from hypothesis import given
from hypothesis import strategies as st

from workers.pruning import Asha, Hyperband, Median, Report, SweepHistory, make_rule
from workers.pruning.rule import Rule

NAN = math.nan
GO, STOP, UNJUDGED = "go", "stop", "-"


def outcome(rule: Rule, report: Report) -> tuple[str, int | None]:
    """What `rule` says of `report`: go / stop / - (nothing to compare), and the rung."""
    decision = rule.judge(report)
    word = STOP if decision.stop else GO if decision.judged else UNJUDGED
    return word, decision.rung


def replay(
    rule: Rule, curve: list[tuple[str, int, float]], planned: int | None = None
) -> list[tuple[str, int | None]]:
    """Each report of `curve` judged in turn (report i at millisecond i)."""
    return [
        outcome(rule, Report(trial, epoch, value, at=(ms, 0), planned=planned))
        for ms, (trial, epoch, value) in enumerate(curve)
    ]


# ---- ASHA ----------------------------------------------------------------------------------


def test_asha_keeps_the_top_ceil_n_over_eta_at_each_rung() -> None:
    # eta 2, r 1, rungs below 8: epochs 1, 2, 4. At a rung with n values (the trial's own and
    # those recorded before it), the top ceil(n/2) go on; the cutoff is the ceil(n/2)-th best.
    rule = Asha(min_resource=1, reduction_factor=2, max_resource=8, metric="accuracy")
    curve = [
        ("a", 1, 0.50),  # rung 1: {.50}, n 1, keep 1, cutoff .50: go (first value)
        ("b", 1, 0.60),  # rung 1: {.50 .60}, keep 1, cutoff .60: go
        ("c", 1, 0.55),  # rung 1: {.60 .55 .50}, keep 2, cutoff .55: a tie goes on: go
        ("d", 1, 0.40),  # rung 1: {.60 .55 .50 .40}, keep 2, cutoff .55: stop at rung 1
        ("a", 2, 0.70),  # rung 2: {.70}: go
        ("b", 2, 0.65),  # rung 2: {.70 .65}, keep 1, cutoff .70: stop at rung 2
        ("c", 2, 0.75),  # rung 2: {.75 .70 .65} (b's value counts), keep 2, cutoff .70: go
        ("d", 2, 0.99),  # d was stopped: its stop stands, .99 is not recorded
        ("e", 1, NAN),  # NaN at rung 1: stop, not recorded
        # f arrives late: rung 1 holds a b c d (e's NaN is not there): {.60 .55 .52 .50 .40},
        # n 5, keep 3, cutoff .52: a tie, go
        ("f", 1, 0.52),
        ("f", 2, 0.66),  # rung 2: {.75 .70 .66 .65}, keep 2, cutoff .70: stop at rung 2
        ("a", 3, 0.10),  # epoch 3 is no rung: nothing to compare
        ("a", 4, 0.80),  # rung 3 (epoch 4): {.80}: go
        # h's epoch-1 report is missing: at epoch 2 it is judged at rung 1 then rung 2 with .58.
        # Rung 1: {.60 .58 .55 .52 .50 .40}, keep 3, cutoff .55: go on to rung 2:
        # {.75 .70 .66 .65 .58}, keep 3, cutoff .66: stop at rung 2
        ("h", 2, 0.58),
        ("a", 8, 0.90),  # past the last rung (8 is the cap): nothing to compare
    ]
    assert replay(rule, curve) == [
        (GO, 1),
        (GO, 1),
        (GO, 1),
        (STOP, 1),
        (GO, 2),
        (STOP, 2),
        (GO, 2),
        (STOP, 1),
        (STOP, 1),
        (GO, 1),
        (STOP, 2),
        (UNJUDGED, None),
        (GO, 3),
        (STOP, 2),
        (UNJUDGED, None),
    ]


def test_asha_reasons_name_the_rung_the_value_and_the_cutoff() -> None:
    rule = Asha(min_resource=1, reduction_factor=3, max_resource=27, metric="accuracy")
    for ms, value in enumerate([0.9, 0.86, 0.88, 0.7, 0.95, 0.87]):
        rule.judge(Report(f"t{ms}", 1, value, at=(ms, 0)))
    # 7 values at rung 1: keep ceil(7/3) = 3; best first .95 .90 .88 .87 .86 .81 .70: cutoff .88
    decision = rule.judge(Report("late", 1, 0.81, at=(9, 0)))
    assert decision.stop
    assert decision.reason == (
        "rung 1 (epoch 1): accuracy 0.81 below the cutoff 0.88 of 7 trials (the top 3 go on)"
    )


def test_asha_in_min_mode_keeps_the_lowest() -> None:
    rule = Asha(min_resource=1, reduction_factor=2, max_resource=4, metric="loss", mode="min")
    curve = [
        ("a", 1, 1.0),  # rung 1: {1.0}: go
        ("b", 1, 2.0),  # rung 1: {1.0 2.0}, keep 1, cutoff 1.0 (lowest): 2.0 is worse: stop
        ("c", 1, 0.5),  # rung 1: {.5 1.0 2.0}, keep 2, cutoff 1.0: go
    ]
    assert replay(rule, curve) == [(GO, 1), (STOP, 1), (GO, 1)]
    assert "loss 2 above the cutoff 1" in rule.stopped("b").reason


def test_asha_never_judges_a_trial_with_fewer_epochs_than_the_first_rung() -> None:
    # r 2, eta 2, no maximum resource: each trial's rungs lie below its own planned epochs.
    rule = Asha(min_resource=2, reduction_factor=2)
    reports = [
        Report("p", 1, 0.9, at=(0, 0), planned=2),  # first rung 2 is not below 2: no rung
        Report("p", 2, 0.9, at=(1, 0), planned=2),  # its last epoch: not judged, not recorded
        Report("s", 1, 0.95, at=(2, 0), planned=1),  # a one-epoch trial: never judged
        Report("q", 2, 0.1, at=(3, 0), planned=8),  # rung 1 (epoch 2): {.1}: go (p not there)
        Report("u", 2, 0.05, at=(4, 0), planned=8),  # rung 1: {.1 .05}, keep 1, cutoff .1: stop
        Report("q", 4, 0.3, at=(5, 0), planned=8),  # rung 2 (epoch 4): {.3}: go
    ]
    assert [outcome(rule, r) for r in reports] == [
        (UNJUDGED, None),
        (UNJUDGED, None),
        (UNJUDGED, None),
        (GO, 1),
        (STOP, 1),
        (GO, 2),
    ]
    assert rule.judge(Report("p", 2, 0.9, at=(6, 0), planned=2)).reason == (
        "epoch 2: no rung below the trial's 2 epochs (the first rung is at epoch 2)"
    )


def test_reports_of_the_same_millisecond_do_not_count_for_each_other() -> None:
    # x and y report rung 1 in the same millisecond: neither sees the other. z comes later.
    rule = Asha(min_resource=1, reduction_factor=2, max_resource=4)
    reports = [
        Report("x", 1, 0.3, at=(5, 0)),  # rung 1: {.3}: go
        Report("y", 1, 0.2, at=(5, 0)),  # x is not earlier: {.2}: go
        Report("z", 1, 0.1, at=(6, 0)),  # {.3 .2 .1}, keep 2, cutoff .2: stop
    ]
    assert [outcome(rule, r) for r in reports] == [(GO, 1), (GO, 1), (STOP, 1)]


# ---- Median ---------------------------------------------------------------------------------


def test_median_counts_running_trials_and_judges_the_best_value_so_far() -> None:
    # From epoch 2, with at least 2 other trials' values at the epoch: stop a trial whose best
    # value so far is below the median of the others' values at that epoch. No trial has
    # finished in this curve: they all run in parallel.
    rule = Median(min_resource=2, min_trials=2, metric="accuracy")
    curve = [
        ("a", 1, 0.50),  # epoch 1 < 2: not judged (recorded)
        ("b", 1, 0.40),  # not judged
        ("c", 1, 0.30),  # not judged
        ("a", 2, 0.60),  # epoch 2: no other value yet (0 < 2): not judged
        ("b", 2, 0.50),  # others {.60}: 1 < 2: not judged
        ("c", 2, 0.45),  # others {.60 .50}: median .55; best .45 < .55: stop
        ("d", 1, NAN),  # not judged (epoch 1)
        ("d", 2, NAN),  # every value so far NaN: stop
        # others {.60 .50 .45} (c's value counts, d's NaN does not): median .50; e's best so
        # far is .90 (epoch 1) >= .50: go
        ("e", 1, 0.90),
        ("e", 2, 0.55),
        # f has no epoch-1 value; others {.60 .50 .45 .55}: median (.50 + .55) / 2 = .525;
        # best .50 < .525: stop
        ("f", 2, 0.50),
        # others {.60 .50 .45 .55 .50}: median .50; best .50 is a tie: go
        ("g", 2, 0.50),
        ("c", 3, 0.99),  # c was stopped: the stop stands
    ]
    assert replay(rule, curve) == [
        (UNJUDGED, None),
        (UNJUDGED, None),
        (UNJUDGED, None),
        (UNJUDGED, None),
        (UNJUDGED, None),
        (STOP, None),
        (UNJUDGED, None),
        (STOP, None),
        (UNJUDGED, None),
        (GO, None),
        (STOP, None),
        (GO, None),
        (STOP, None),
    ]
    assert rule.stopped("c").reason == (
        "epoch 2: best accuracy so far 0.45 below the median 0.55 of 2 other trials at this epoch"
    )


def test_median_in_min_mode_stops_the_higher_losses() -> None:
    rule = Median(min_resource=1, min_trials=1, metric="loss", mode="min")
    curve = [
        ("a", 1, 1.0),  # no other value: not judged
        ("b", 1, 3.0),  # others {1.0}: median 1.0; 3.0 is worse: stop
        ("c", 1, 2.0),  # others {1.0 3.0}: median 2.0; a tie: go
    ]
    assert replay(rule, curve) == [(UNJUDGED, None), (STOP, None), (GO, None)]


# ---- Hyperband -------------------------------------------------------------------------------


def test_hyperband_judges_each_trial_in_its_bracket_only() -> None:
    # r 1, eta 3, R 9 (the first trial's planned epochs): 1 * 3**2 = 9 <= 9, so 3 brackets.
    # Shares ceil(3 * 3**(2-b) / (3-b)): 9, 5, 3 (sum 17). Bracket 1 rungs: epochs 1, 3;
    # bracket 2: epoch 3; bracket 3: its first rung 9 is not below R: it never prunes.
    # crc32("hb_<number>") mod 17 (zlib, below): 0 -> 7, 1 -> 0: bracket 1 (0..8);
    # 4 -> 9, 5 -> 11: bracket 2 (9..13); 2 -> 16: bracket 3 (14..16).
    assert [zlib.crc32(f"hb_{i}".encode()) % 17 for i in (0, 1, 4, 5, 2)] == [7, 0, 9, 11, 16]
    rule = Hyperband(sweep="hb", min_resource=1, reduction_factor=3, metric="accuracy")
    curve = [
        (0, 1, 0.5),  # bracket 1, rung 1 (epoch 1): {.5}: go
        (1, 1, 0.4),  # bracket 1, rung 1: {.5 .4}, keep ceil(2/3) = 1, cutoff .5: stop
        (4, 1, 0.1),  # bracket 2: epoch 1 is no rung there: not judged (bracket 1 would stop it)
        (5, 1, 0.9),  # bracket 2: not judged
        (2, 1, 0.0),  # bracket 3: no rung below 9
        (4, 3, 0.6),  # bracket 2, rung 1 (epoch 3): {.6}: go
        (5, 3, 0.5),  # bracket 2, rung 1: {.6 .5}, keep 1, cutoff .6: stop
        # bracket 1, rung 2 (epoch 3): trial 1 was stopped at rung 1 and trials 4, 5 are in
        # bracket 2, so the rung holds only .3: go
        (0, 3, 0.3),
        (2, 9, 0.0),  # bracket 3, epoch 9: no rung
    ]
    got = [
        outcome(rule, Report(f"t{n}", epoch, value, at=(ms, 0), number=n, planned=9))
        for ms, (n, epoch, value) in enumerate(curve)
    ]
    assert got == [
        (GO, 1),
        (STOP, 1),
        (UNJUDGED, None),
        (UNJUDGED, None),
        (UNJUDGED, None),
        (GO, 1),
        (STOP, 1),
        (GO, 2),
        (UNJUDGED, None),
    ]
    assert rule.stopped("t5").reason.startswith("rung 1 (epoch 3), bracket 2 of 3: accuracy 0.5")


def test_hyperband_with_a_nan_stops_at_the_first_rung_of_its_bracket() -> None:
    rule = Hyperband(sweep="hb", min_resource=1, reduction_factor=3, max_resource=9)
    # trial 4 is in bracket 2 (above): its first rung is epoch 3; epoch 1 is not judged.
    assert outcome(rule, Report("t4", 1, NAN, at=(0, 0), number=4)) == (UNJUDGED, None)
    assert outcome(rule, Report("t4", 3, NAN, at=(1, 0), number=4)) == (STOP, 1)


# ---- the history: bus order, whatever the reading order ---------------------------------------

CURVES = {
    "a": [0.50, 0.70, 0.10, 0.80],
    "b": [0.60, 0.65, 0.66, 0.67],
    "c": [0.55, 0.75, 0.80, 0.85],
    "d": [0.40, 0.99, 0.99, 0.99],
}


def bus_reports() -> list[Report]:
    """The curves as a sweep of 4 trials in lockstep: epoch by epoch, a b c d, 1 ms apart."""
    reports, ms = [], 0
    for epoch in range(1, 5):
        for trial, values in CURVES.items():
            reports.append(Report(trial, epoch, values[epoch - 1], at=(ms, 0), planned=4))
            ms += 1
    return reports


def decided(history: SweepHistory) -> dict[tuple[str, int], bool]:
    """(trial, epoch) -> stop, for every judged decision."""
    return {key: d.stop for key, d in history.decisions.items() if d.judged}


def test_the_history_feeds_in_bus_order_up_to_the_watermark_and_drops_repeats() -> None:
    history = SweepHistory(Asha(min_resource=1, reduction_factor=2, max_resource=4))
    reports = bus_reports()
    # Read trial by trial (d's whole topic first, then c's ...), not in bus order.
    for trial in "dcba":
        for report in reports:
            if report.trial == trial:
                assert history.add(report)
    assert not history.add(Report("a", 1, 0.0, at=(99, 0)))  # a resumed trial's repeat
    # Up to b's epoch-1 report (ms 1): a's and b's epoch-1 reports are fed, nothing else.
    fed = history.advance((1, 0), "b")
    assert [(r.trial, r.epoch) for r, _ in fed] == [("a", 1), ("b", 1)]
    assert history.decision("c", 1) is None and history.pending == 14
    history.feed_all()
    # By hand, eta 2, rungs 1, 2 (below 4): rung 1: a .50 go; b .60 {.5 .6} keep 1 cut .6 go;
    # c .55 {.6 .55 .5} keep 2 cut .55 go; d .40 {...} keep 2 cut .55 stop.
    # Rung 2: a .70 go; b .65 {.7 .65} cut .7 stop; c .75 {.75 .7 .65} keep 2 cut .7 go.
    assert decided(history) == {
        ("a", 1): False,
        ("b", 1): False,
        ("c", 1): False,
        ("d", 1): True,
        ("a", 2): False,
        ("b", 2): True,
        ("c", 2): False,
        ("d", 2): True,  # its standing stop
        ("b", 3): True,
        ("d", 3): True,
        ("b", 4): True,
        ("d", 4): True,
    }


@given(st.permutations("abcd"), st.sampled_from(["asha", "median", "hyperband"]))
def test_any_reading_order_of_the_trials_gives_the_same_decisions(order, name) -> None:
    # What a restarted pruner relies on: it reads the trials' topics one after the other, in
    # whatever order, and must decide as the pruner that read them live did.
    def run(trial_order: list[str]) -> dict:
        rule = make_rule(name, sweep="s", metric="m", mode="max")
        history = SweepHistory(rule)
        for trial in trial_order:
            for report in bus_reports():
                if report.trial == trial:
                    history.add(report)
        history.feed_all()
        return {key: (d.stop, d.reason) for key, d in history.decisions.items()}

    assert run(list(order)) == run(list("abcd"))


def test_make_rule_refuses_an_unknown_rule_and_an_option_the_rule_does_not_take() -> None:
    try:
        make_rule("nope", sweep="s", metric="m", mode="max")
    except ValueError as exc:
        assert str(exc) == "unknown pruning rule 'nope': use one of asha, median, hyperband"
    else:
        raise AssertionError("no error")
    try:
        make_rule("median", sweep="s", metric="m", mode="max", reduction_factor=3)
    except ValueError as exc:
        assert "median rule takes no reduction_factor" in str(exc)
    else:
        raise AssertionError("no error")
