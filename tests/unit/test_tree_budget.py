"""`--tree_budget auto`: the planner scores every beam shape on the same calibration positions, exactly as greedy
verification would accept it, and trades acceptance against this machine's verification cost."""

from __future__ import annotations

import json

import pytest

from drafter.generation import SpeculativeGenerator, tree_budget
from drafter.generation.tree import build_tree
from drafter.generation.tree_budget import chain_beams, forward_cost_curve, nondecreasing, plan_tree_shape
from tests.fakes import OracleDrafter, hf_greedy, make_tiny_eagle3, make_tiny_llama, make_tiny_redrafter

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = [[5, 6, 7], [9, 10, 11, 12], [20, 21]]


def oracle_case(wrong_every: int = 0):
    base = make_tiny_llama(seed=3)
    continuations = [hf_greedy(base, p, 60) for p in PROMPTS]
    drafter = OracleDrafter(base, [p + c for p, c in zip(PROMPTS, continuations)], wrong_every=wrong_every)
    return base, drafter


def flat_curve(nodes: int = 40, ms: float = 10.0) -> dict:
    return {n: ms for n in range(1, nodes + 1)}


@pytest.mark.parametrize("nodes", [1, 2, 3, 5, 8, 9, 17])
def test_chain_beams_pack_to_the_asked_node_count(nodes: int):
    assert build_tree(chain_beams(5, nodes)).size == nodes


def test_perfect_drafter_on_free_verification_drafts_as_far_as_it_can():
    base, drafter = oracle_case()
    plan = plan_tree_shape(base, drafter, PROMPTS, widths=[1, 2], max_new_tokens=30, cost_curve=flat_curve(),
                           log=lambda _: None)
    by_shape = {(c.beam_width, c.beam_length): c for c in plan.candidates}
    assert set(by_shape) == {(w, n) for w in (1, 2) for n in (2, 3, 4, 5)}
    for (_, length), estimate in by_shape.items():
        assert estimate.tokens_per_step == length  # every draft of the oracle is accepted
    assert plan.best.beam_length == 5
    assert "--beam_length 5" in plan.explain()


def test_useless_drafter_on_costly_verification_drafts_least():
    base = make_tiny_llama(seed=3)
    drafter = make_tiny_redrafter(base, seed=0)  # random: next to nothing is accepted
    steep = {n: 10.0 * n for n in range(1, 40)}
    plan = plan_tree_shape(base, drafter, PROMPTS, max_new_tokens=20, cost_curve=steep, log=lambda _: None)
    assert (plan.best.beam_width, plan.best.beam_length) == (1, 2)
    assert plan.best.speedup(plan.plain_step_ms) < 1.0  # and the plan says so


def test_estimate_of_the_calibration_shape_is_its_real_tau():
    """For the shape the calibration decode itself runs (here the only one), the estimate re-drafts the very
    contexts that decode verified, so it must equal the tau that decoding at that shape achieves."""
    base, drafter = oracle_case(wrong_every=3)  # partial acceptance
    plan = plan_tree_shape(base, drafter, PROMPTS, widths=[2], lengths=[3], max_new_tokens=30,
                           cost_curve=flat_curve(), log=lambda _: None)
    decoder = SpeculativeGenerator(base, drafter, beam_width=2, beam_length=3)
    results = [decoder.generate([p], max_new_tokens=30) for p in PROMPTS]
    accepted = sum(r.accepted_per_sequence[0] for r in results)
    steps = sum(r.steps_per_sequence[0] for r in results)
    assert 1.2 < plan.candidates[0].tokens_per_step < 3
    # Only steps whose whole continuation exists count in the plan (the last one or two may not).
    assert plan.candidates[0].tokens_per_step == pytest.approx(accepted / steps, abs=0.1)


def test_eagle3_calibration_re_drafts_from_snapshots_of_its_context_cache():
    """EAGLE-3 drafts from a cache the decode updates in place: the planner's re-drafting must see each step's
    cache as it was, so the calibration shape's estimate is again its real tau."""
    base = make_tiny_llama(seed=3, vocab_size=12)  # a small vocabulary: random drafts are often accepted
    drafter = make_tiny_eagle3(base, seed=2)
    prompts = [[5, 6, 7], [9, 10, 11, 4], [3, 8]]
    plan = plan_tree_shape(base, drafter, prompts, widths=[3], lengths=[3], max_new_tokens=40,
                           cost_curve=flat_curve(), log=lambda _: None)
    decoder = SpeculativeGenerator(base, drafter, beam_width=3, beam_length=3)
    results = [decoder.generate([p], max_new_tokens=40) for p in prompts]
    tau = sum(r.accepted_per_sequence[0] for r in results) / sum(r.steps_per_sequence[0] for r in results)
    assert tau > 1.1
    assert plan.candidates[0].tokens_per_step == pytest.approx(tau, abs=0.05)


def test_cost_curve_is_measured_once_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAFTER_CACHE", str(tmp_path))
    base = make_tiny_llama(seed=0)
    calls = []
    real = tree_budget.TreeForwardTimer.milliseconds
    monkeypatch.setattr(tree_budget.TreeForwardTimer, "milliseconds",
                        lambda self, n, repeats: calls.append(n) or real(self, n, repeats))
    first = forward_cost_curve(base, 4, repeats=1, log=lambda _: None)
    assert calls == [1, 2, 3, 4] and set(first) == {1, 2, 3, 4}
    assert forward_cost_curve(base, 4, repeats=1, log=lambda _: None) == first
    assert calls == [1, 2, 3, 4]  # from the cache
    forward_cost_curve(base, 6, repeats=1, log=lambda _: None)
    assert calls == [1, 2, 3, 4, 5, 6]  # only the missing node counts
    assert all(a <= b for a, b in zip(list(first.values()), list(first.values())[1:]))
    saved = json.loads(next(tmp_path.rglob("forward-cost-*.json")).read_text())
    assert saved["key"]["machine"]["threads"] == 1 and len(saved["milliseconds"]) == 6


def test_nondecreasing_pools_noise_dips():
    assert nondecreasing([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert nondecreasing([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert nondecreasing([5.0, 1.0, 0.0]) == [2.0, 2.0, 2.0]


def test_plan_is_cached_per_drafter(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAFTER_CACHE", str(tmp_path))
    base = make_tiny_llama(seed=3)
    drafter = make_tiny_redrafter(base, seed=0)
    monkeypatch.setattr(tree_budget, "forward_cost_curve", lambda base, nodes, log: flat_curve())
    first = plan_tree_shape(base, drafter, PROMPTS, widths=[1, 2], max_new_tokens=12, log=lambda _: None)
    again = plan_tree_shape(base, drafter, PROMPTS, widths=[1, 2], max_new_tokens=12, log=lambda _: None)
    assert not first.cached and again.cached and again.to_dict() == first.to_dict()
    assert "cached" in again.explain()
    other = plan_tree_shape(base, make_tiny_redrafter(base, seed=1), PROMPTS, widths=[1, 2], max_new_tokens=12,
                            log=lambda _: None)
    assert not other.cached  # other weights, other plan
