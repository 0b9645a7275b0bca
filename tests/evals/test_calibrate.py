"""Choosing the lexical gate: the highest one within the false-refusal budget."""

from __future__ import annotations

from evals.calibrate import Scored, choose_gate, rates


def scored(answerable: list[float], unanswerable: list[float]) -> list[Scored]:
    return [Scored(s, False) for s in answerable] + [Scored(s, True) for s in unanswerable]


def test_rates_refuse_what_scores_under_the_gate():
    sample = scored([0.9, 0.8, 0.4, 0.7], [0.1, 0.45, 0.6])
    at = rates(sample, 0.5)
    assert (at.refused, at.false_refusal) == (2 / 3, 1 / 4)
    # Exactly at the gate passes, as `select_evidence` lets it through.
    assert rates(scored([0.5], [0.5]), 0.5).refused == 0.0


def test_the_chosen_gate_is_the_highest_within_the_budget():
    answerable = [0.3] + [0.8] * 99  # one answerable question scores low
    sample = scored(answerable, [0.2, 0.4, 0.6, 0.75])
    chosen = choose_gate(sample, budget=0.01)
    # Any gate up to 0.8 refuses the one low answerable question (1%): within budget; above
    # 0.8 every answerable one would be refused.
    assert chosen.gate == 0.8
    assert chosen.false_refusal == 0.01 and chosen.refused == 1.0
    # No room at all: the gate drops below the low answerable question.
    strict = choose_gate(sample, budget=0.0)
    assert strict.gate == 0.3 and strict.false_refusal == 0.0
