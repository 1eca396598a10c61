"""Fixtures of the script tests."""

import pytest

from research import statistics


@pytest.fixture(autouse=True)
def few_bootstrap_resamples(monkeypatch):
    """rliable's bootstrap calls its statistic once per resample in Python: 100 keep these tests quick (the scripts
    use ``research.statistics.BOOTSTRAP_REPS``)."""
    monkeypatch.setattr(statistics, "BOOTSTRAP_REPS", 100)
