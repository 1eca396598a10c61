"""research.statistics: known answers on small tables, and agreement with rliable's own metrics."""

import sys

import numpy as np
import pytest
from scipy.stats import binomtest

from research import statistics as st
from research.algos import family

REPS = 100  # rliable's bootstrap is a Python loop per resample


def test_interquartile_mean_known_values_and_rliable():
    from rliable import metrics

    assert st.interquartile_mean(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(3.0)
    table = np.arange(12.0).reshape(4, 3)  # [runs, tasks]: the middle 6 of 0..11 are 3..8
    assert st.interquartile_mean(table, axis=None) == pytest.approx(5.5) == metrics.aggregate_iqm(table)
    point, low, high = st.iqm_interval(table, reps=REPS)
    assert point == pytest.approx(5.5) and low <= point <= high and low < high


def test_intervals_are_reproducible_and_leave_the_global_rng_alone():
    scores = np.random.default_rng(0).normal(size=(6, 2))
    np.random.seed(7)
    expected_next = np.random.random()
    np.random.seed(7)
    first = st.iqm_interval(scores, reps=REPS)
    assert np.random.random() == expected_next
    assert st.iqm_interval(scores, reps=REPS) == first
    assert st.iqm_interval(np.full(5, -3.0), reps=REPS) == (-3.0, -3.0, -3.0)
    assert all(np.isnan(st.iqm_interval(np.array([]), reps=REPS)))
    assert all(np.isnan(st.mean_interval(np.array([1.0, np.nan]), reps=REPS)))


def test_probability_of_improvement():
    from rliable import metrics

    x = np.array([[3.0, 10.0], [4.0, 11.0], [5.0, 12.0]])
    assert st.probability_of_improvement(x, x - 10.0, reps=REPS) == (1.0, 1.0, 1.0)  # better on every run
    assert st.probability_of_improvement(x - 10.0, x, reps=REPS) == (0.0, 0.0, 0.0)
    assert st.improvement_probability(x, x) == 0.5
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 3)), rng.normal(0.5, size=(7, 3)).round(1)
    b[0, 0] = a[0, 0]  # a tie counts half
    assert st.improvement_probability(a, b) == pytest.approx(metrics.probability_of_improvement(a, b))
    point, low, high = st.probability_of_improvement(a, b, reps=REPS)
    assert 0.0 <= low <= point <= high <= 1.0 and low < high
    with pytest.raises(ValueError, match="same tasks"):
        st.probability_of_improvement(a, b[:, :2])


def test_clopper_pearson_and_failure_rate():
    low, high = st.clopper_pearson(0, 5)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 5)) and high == pytest.approx(0.5218, abs=1e-4)
    assert st.clopper_pearson(5, 5) == (pytest.approx(0.025 ** (1 / 5)), 1.0)
    exact = binomtest(3, 10).proportion_ci(confidence_level=0.95, method="exact")
    assert st.clopper_pearson(3, 10) == (pytest.approx(exact.low), pytest.approx(exact.high))
    assert all(np.isnan(st.clopper_pearson(0, 0)))
    failed, n, rate, low, high = st.failure_rate(np.array([[0.95, 0.5], [0.99, 0.89], [0.2, 0.91]]))
    assert (failed, n, rate) == (3, 6, 0.5) and low < rate < high
    assert st.failure_rate(np.array([0.9, 0.95]))[:3] == (0, 2, 0.0)  # exactly at the threshold passes
    assert np.isnan(st.failure_rate(np.array([0.95, np.nan]))[2])


def test_performance_profile_matches_rliable_and_its_band_holds_it():
    from rliable import library

    scores = {"a": np.random.default_rng(1).uniform(size=(6, 2)), "b": np.linspace(0.1, 0.9, 5)}
    taus = np.linspace(0.0, 1.0, 11)
    profiles = st.performance_profile(scores, taus, reps=REPS)
    reference, _ = library.create_performance_profile({"a": scores["a"]}, taus, reps=5)
    assert profiles["a"][0] == pytest.approx(reference["a"])
    for profile, low, high in profiles.values():
        assert np.all(np.diff(profile) <= 0) and np.all(low <= profile) and np.all(profile <= high)
    assert profiles["b"][0][5] == pytest.approx(0.4)  # 0.7, 0.9 of 0.1 .. 0.9 are above 0.5 (0.5 is not)


def test_families_gap_target_and_missing_rliable(monkeypatch):
    assert st.is_backprop("bptt") and st.is_backprop("shac") and st.is_backprop("bptt_blend")
    assert st.is_backprop("ahac") and st.is_backprop("bptt_squash") and st.is_backprop("shac_nosquash")
    assert not st.is_backprop("ddpg") and not st.is_backprop("ppo") and st.family("td3") == "model-free"
    assert st.family("ptd3") == "model-free" and st.family("td3_fast") == "model-free"  # ptd3's, td3's variant
    assert st.family("nope") == st.OTHER and not st.is_backprop("nope")  # a name the registry does not know
    with pytest.raises(ValueError, match="no algorithm family for 'nope'"):
        family("nope")
    assert st.gap_target_score(0.99) == pytest.approx(0.98) and st.gap_target_score(1.02) == 1.0
    monkeypatch.setitem(sys.modules, "rliable", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[stats\]"):
        st.iqm_interval(np.arange(5.0))
