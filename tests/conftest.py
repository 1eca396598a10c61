"""Shared fixtures and marker handling for the whole test suite.

Markers (declared in ``setup.cfg``): ``slow`` (learning checks), ``cuda`` (skipped here when no GPU is present) and
``ray`` (skipped here when Ray is not installed).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

#: Number of random initial states and steps per state in the Gymnasium parity reference.
PARITY_STATES = 256
PARITY_STEPS = 200


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips ``cuda`` tests without a GPU and ``ray`` tests without Ray, instead of failing them."""
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    skip_ray = pytest.mark.skip(reason="needs the optional Ray extra (pip install -e '.[distributed]')")
    has_cuda = torch.cuda.is_available()
    has_ray = importlib.util.find_spec("ray") is not None
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "ray" in item.keywords and not has_ray:
            item.add_marker(skip_ray)


@pytest.fixture(scope="session")
def gymnasium_reference() -> dict[str, np.ndarray]:
    """Trajectories of the real Gymnasium Pendulum-v1 from hard initial states, computed once per session.

    ``PARITY_STATES`` initial states: ``th ~ U[-3 pi, 3 pi]`` (so many have ``|th| > pi``), ``thdot ~ U[-8, 8]`` with
    the first 32 states pinned at ``thdot = +-8`` (the speed limit); actions ``~ U[-3, 3]`` so the torque clip at
    ``+-2`` is hit about a third of the time. Gymnasium is stepped in a plain Python loop (about 51k steps).

    Returns a dict of float64 arrays, with ``N = PARITY_STATES`` and ``T = PARITY_STEPS``:
        ``th``, ``thdot``: ``[N, T + 1]`` states (column 0 is the initial state; Gymnasium never wraps ``th``);
        ``action``: ``[N, T]``, exactly the float32 values Gymnasium received (stored as float64);
        ``reward``: ``[N, T]``.
    """
    gymnasium = pytest.importorskip("gymnasium")
    rng = np.random.default_rng(20240601)
    n, horizon = PARITY_STATES, PARITY_STEPS
    th0 = rng.uniform(-3 * math.pi, 3 * math.pi, size=n)
    thdot0 = rng.uniform(-8.0, 8.0, size=n)
    thdot0[:16], thdot0[16:32] = 8.0, -8.0
    actions = rng.uniform(-3.0, 3.0, size=(n, horizon)).astype(np.float32)

    env = gymnasium.make("Pendulum-v1").unwrapped
    th = np.empty((n, horizon + 1))
    thdot = np.empty((n, horizon + 1))
    reward = np.empty((n, horizon))
    for i in range(n):
        env.state = np.array([th0[i], thdot0[i]])
        th[i, 0], thdot[i, 0] = env.state
        for t in range(horizon):
            _, r, terminated, truncated, _ = env.step(actions[i, t : t + 1])
            assert not (terminated or truncated)  # the unwrapped env never ends by itself
            reward[i, t] = float(r)
            th[i, t + 1], thdot[i, t + 1] = env.state
    env.close()
    return {"th": th, "thdot": thdot, "action": actions.astype(np.float64), "reward": reward}
