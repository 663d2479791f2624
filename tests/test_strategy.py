"""How a stage of the broad strategy decides, on hand-made scores: ties at the ceiling or within
noise, the default kept unless beaten by a paired 95% interval, the training-cost trend."""

import math

import pytest

from nnexp.search.strategy import cost_decreasing, weigh
from nnexp.stats import includes_zero, paired_interval


def test_scores_all_at_the_ceiling_are_a_tie():
    w = weigh({0.1: [1.0, 1.0, 1.0], 1.0: [1.0, 1.0, 1.0], 10.0: [1.0, 1.0, 1.0]}, default=1.0)
    assert w["tie"] and "100%" in w["tie_reason"] and w["chosen"] == 1.0


def test_values_within_noise_of_each_other_are_a_tie_and_keep_the_default():
    # 0.1 looks best on average, but seed by seed the values cross: no signal
    w = weigh({0.1: [0.93, 0.90, 0.95], 1.0: [0.92, 0.93, 0.91], 10.0: [0.90, 0.94, 0.92]}, default=1.0)
    assert w["tie"] and w["chosen"] == 1.0 and w["best"] == 0.1
    assert includes_zero(w["vs_default"])


def test_a_signal_elsewhere_but_a_winner_within_noise_of_the_default_keeps_the_default():
    # 10 is clearly worse (a signal: no tie), 0.1 beats the default 1 only within noise
    w = weigh({0.1: [0.95, 0.92, 0.96], 1.0: [0.94, 0.93, 0.94], 10.0: [0.80, 0.79, 0.81]}, default=1.0)
    assert not w["tie"] and w["best"] == 0.1 and w["chosen"] == 1.0
    assert w["vs_default"]["lo"] < 0 < w["vs_default"]["hi"] and "is kept" in w["why"]


def test_a_value_that_beats_the_default_on_every_seed_is_chosen_with_its_interval():
    w = weigh({0.1: [0.90, 0.91, 0.92], 1.0: [0.93, 0.94, 0.95], 10.0: [0.96, 0.97, 0.98]}, default=1.0)
    assert not w["tie"] and w["chosen"] == 10.0 == w["best"] and w["runner_up"] == 1.0
    iv = w["vs_default"]
    assert iv["lo"] > 0 and iv["mean"] == pytest.approx(0.03) and iv["n"] == 3
    assert "beats the default" in w["why"] and "95% interval" in w["why"]


def test_paired_interval_is_the_t_interval_of_the_differences():
    iv = paired_interval([0.80, 0.82, 0.84], [0.81, 0.84, 0.87])  # differences 0.01, 0.02, 0.03
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert (iv["mean"], iv["lo"], iv["hi"]) == (pytest.approx(0.02), pytest.approx(0.02 - half),
                                                pytest.approx(0.02 + half))
    assert includes_zero(paired_interval([0.5], [0.9]))  # one seed: unknown, so no difference is shown


@pytest.mark.parametrize("costs, expected", [
    ([2.0, 1.5, 1.2, 1.0], True),          # smooth decrease
    ([2.0, 1.0, 1.6, 0.9, 1.5, 0.8], False),  # oscillation: rises of 1.2 against a net fall of 1.2
    ([1.0, 1.2, 1.5], False),              # rising
    ([1.0, None, 0.5], False),             # a non-finite cost: diverged
])
def test_the_training_cost_trend(costs, expected):
    assert cost_decreasing(costs) is expected


def test_a_value_shown_better_than_the_default_is_not_lost_to_a_noisy_worst_value():
    # the lambda_refine scores of the MNIST study (seed 0): 3 beats 1 on every seed, while the
    # paired interval of 3 against the worst, 1/3, is wider and includes zero
    scores = {1 / 3: [0.9622, 0.9629, 0.9636], 1.0: [0.9628, 0.9648, 0.9640], 3.0: [0.9638, 0.9661, 0.9653]}
    assert includes_zero(paired_interval(scores[1 / 3], scores[3.0]))
    w = weigh(scores, default=1.0)
    assert not w["tie"] and w["chosen"] == 3.0 and w["vs_default"]["lo"] > 0
