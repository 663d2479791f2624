"""How a stage of the broad strategy decides, on hand-made scores and by simulation: the error
rate each rule holds (Holm over the comparisons, the resolution floor, saturation among the
contenders, more seeds when unresolved), the scores (same budget, area under the curve) and the
training-cost trend."""

import math

import numpy as np
import pytest
from scipy import stats

from nnexp.bench.calibration import SimulatedGrid, StageKind, rates
from nnexp.search.strategy import cost_decreasing, curve_area_scores, equal_budget_scores
from nnexp.search.weighing import area_under_curve, weigh
from nnexp.stats import paired_interval
from nnexp.stats.decide import ALPHA, Resolution, holm, paired_test

HUNDRED = Resolution(0.01)  # a score on 100 validation images
FULL = Resolution(1e-4)  # on 10,000


def test_the_zero_width_example_is_a_tie():
    # one validation image per seed, the same on every seed: an interval of zero width
    w = weigh({0.1: [1, 1, 1], 1: [.99] * 3, 10: [.99] * 3}, 1, HUNDRED)
    assert w["tie"] and w["chosen"] == 1
    assert w["vs_default"]["lo"] < w["vs_default"]["hi"]  # the floored std: never zero width


def test_two_values_at_the_ceiling_tie_among_themselves_and_the_stage_escalates():
    w = weigh({0.1: [1, 1, 1], 1: [1, 1, 1], 10: [.5, .5, .5]}, 1, HUNDRED)
    assert w["tie"] and "saturated" in w["tie_reason"] and w["chosen"] == 1


def test_one_value_at_the_ceiling_clearly_above_the_rest_is_a_decision():
    w = weigh({0.1: [1, 1, 1], 1: [.80, .82, .79], 10: [.5, .52, .49]}, 1, HUNDRED)
    assert not w["tie"] and w["chosen"] == 0.1


def test_a_difference_within_the_floor_is_a_tie_however_consistent():
    # +0.5 pp on every seed, measured on 100 images (1 pp resolution): not resolved
    w = weigh({1: [.90, .91, .92], 3: [.905, .915, .925]}, 1, Resolution(0.001, min_effect=0.01))
    assert w["tie"] and w["chosen"] == 1


def test_holm_rejects_step_down():
    assert holm({"a": 0.001, "b": 0.02, "c": 0.06}, 0.05) == {"a", "b"}  # .001 <= .05/3, .02 <= .05/2, .06 > .05
    assert holm({"a": 0.001, "b": 0.02, "c": 0.04}, 0.05) == {"a", "b", "c"}
    assert holm({"a": 0.03, "b": 0.001, "c": 0.04}, 0.05) == {"b"}  # .03 > .05/2: stops there
    assert holm({"a": 0.02, "b": 0.03, "c": 0.04}, 0.05) == set()  # .02 > .05/3: nothing


def test_paired_test_recomputed_by_hand():
    a, b = [0.80, 0.82, 0.84], [0.81, 0.84, 0.87]  # differences 0.01, 0.02, 0.03
    t = paired_test(a, b, FULL)
    se = 0.01 / math.sqrt(3)
    assert t["mean"] == pytest.approx(0.02) and t["std"] == pytest.approx(0.01)
    assert t["p_greater"] == pytest.approx(stats.t.sf((0.02 - 1e-4) / se, 2))
    assert t["p_differ"] == pytest.approx(2 * stats.t.sf((0.02 - 1e-4) / se, 2))
    assert t["lo"] == pytest.approx(0.02 - stats.t.ppf(0.975, 2) * se)
    assert paired_test([0.5], [0.9], FULL)["p_greater"] == 1.0  # one pair: no evidence


def test_a_value_shown_better_than_the_default_is_chosen_with_its_interval():
    # the lambda_refine scores of an MNIST study: 3 beats 1 on every seed
    scores = {1 / 3: [0.9622, 0.9629, 0.9636], 1.0: [0.9628, 0.9648, 0.9640], 3.0: [0.9638, 0.9661, 0.9653]}
    w = weigh(scores, 1.0, FULL)
    d = np.subtract(scores[3.0], scores[1.0])
    assert not w["tie"] and w["chosen"] == 3.0
    assert w["vs_default"]["mean"] == pytest.approx(d.mean()) and w["vs_default"]["n"] == 3
    assert "beats the default" in w["why"]


def test_a_best_mean_not_shown_better_keeps_the_default_and_is_unresolved():
    w = weigh({0.1: [0.95, 0.92, 0.96], 1.0: [0.94, 0.93, 0.94], 10.0: [0.80, 0.79, 0.81]}, 1.0, FULL)
    assert not w["tie"] and w["best"] == 0.1 and w["chosen"] == 1.0 and "is kept" in w["why"]
    assert w["unresolved"] == [0.1, 1.0]  # the default and its challenger: more seeds would settle it


def test_an_unresolved_comparison_trains_more_seeds_of_its_contenders_and_decides_then():
    # a true +1 pp for 10 over the default 1, noise 0.8 pp: often unresolved at 3 seeds
    kind = StageKind("walk", 1.0, 10.0, 0, 10_000, 0.95, 0.008, 0.003)
    rng = np.random.default_rng(3)
    for _ in range(50):
        grid = SimulatedGrid(kind, lambda v: 0.95 + (0.01 if v == 10 else 0.0), rng)
        grid.train([0.1, 1.0, 10.0])
        first = grid.weigh(1.0)
        w = grid.decide(1.0)
        if first["unresolved"]:
            break
    else:
        pytest.fail("no unresolved first look in 50 draws")
    assert sorted(grid.extended) == first["unresolved"]
    assert w["look"] == 2 and w["seeds"][f"{first['unresolved'][0]:.6g}"] == grid.cap == 6
    assert w["alpha"] == pytest.approx(ALPHA / 2)  # each look spends half the error rate
    assert all(w["seeds"][f"{v:.6g}"] == 3 for v in grid.values if v not in grid.extended)


@pytest.mark.parametrize("kind", ["lambda rung", "walk", pytest.param("mini-batch", marks=pytest.mark.slow)])  # 12+ CPU s: .ci/run
def test_each_stage_kind_holds_its_null_false_decision_rate(kind):
    n = 600
    r = rates(kind, n, seed=11)
    assert r["null"] <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / n), r


def test_equal_budget_scores_give_every_value_the_same_number_of_evaluations():
    # value 1 stopped early at 3,000 images; value 2 trained on and scored higher late (a draw
    # the other value never had): scored within 3,000 images both
    early = [[1000, 1, 0.5, 0.90], [2000, 2, 0.4, 0.92], [3000, 3, 0.3, 0.91]]
    late = [[1000, 1, 0.5, 0.89], [2000, 2, 0.4, 0.91], [3000, 3, 0.3, 0.90], [4000, 4, 0.2, 0.99]]
    scores = equal_budget_scores({1.0: [(early, "completed")], 2.0: [(late, "completed")]})
    assert scores == {1.0: [0.92], 2.0: [0.91]}
    diverged = [[1000, 1, None, 0.1]]  # a diverged run does not set the budget
    assert equal_budget_scores({1.0: [(early, "completed")], 2.0: [(diverged, "diverged")]})[1.0] == [0.92]


def test_the_area_under_the_accuracy_time_curve():
    curve = [[100, 1.0, 0.5, 0.5], [200, 2.0, 0.4, 0.8], [300, 3.0, 0.3, 0.9]]
    # 0 until 1 s, 0.5 until 2 s, 0.8 until 3 s, 0.9 until 4 s: mean over 4 s
    assert area_under_curve(curve, 4.0) == pytest.approx((0 + 0.5 + 0.8 + 0.9) / 4)
    assert area_under_curve(curve, 1.5) == pytest.approx(0.5 * 0.5 / 1.5)
    # the horizon is one epoch of the base size (median of its seeds): 2 s here (200 images)
    runs = {10.0: [(curve, None)] * 3, 20.0: [([[200, 1.0, 0.4, 0.8]], None)] * 3}
    scores = curve_area_scores(10, 200)(runs)
    assert scores[10.0] == [pytest.approx(0.25)] * 3 and scores[20.0] == [pytest.approx(0.4)] * 3


def test_paired_interval_is_the_t_interval_of_the_differences():
    iv = paired_interval([0.80, 0.82, 0.84], [0.81, 0.84, 0.87])  # differences 0.01, 0.02, 0.03
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert (iv["mean"], iv["lo"], iv["hi"]) == (pytest.approx(0.02), pytest.approx(0.02 - half),
                                                pytest.approx(0.02 + half))


@pytest.mark.parametrize("costs, expected", [
    ([2.0, 1.5, 1.2, 1.0], True),          # smooth decrease
    ([2.0, 1.0, 1.6, 0.9, 1.5, 0.8], False),  # oscillation: rises of 1.2 against a net fall of 1.2
    ([1.0, 1.2, 1.5], False),              # rising
    ([1.0, None, 0.5], False),             # a non-finite cost: diverged
])
def test_the_training_cost_trend(costs, expected):
    assert cost_decreasing(costs) is expected
