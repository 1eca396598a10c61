"""The pendulum's numbers before and after the system interface (``research.systems``) are the same numbers.

The values below were recorded at commit c247970, before the refactor, with the same calls; on the machine where
the refactor was made (AMD EPYC, torch 2.13) the new code reproduced every one of them bit for bit (and a 5-iteration
BPTT, a 3-iteration SHAC, truncated BPTT on ``randomized`` and a 600-step DDPG run as well). Other CPUs may round
differently (oneDNN picks kernels per CPU), hence the relative tolerance of 1e-5: a change to the physics, the
evaluator or the rollout that moves a committed result fails here.

The native loop runs here with 16-float vectors (``RESEARCH_NATIVE_LANES=16``), the arithmetic of the recorded
values on every CPU (AVX-512 hosts use it natively; an AVX2 host's own 8-float kernels sum the output layer in
another order, which moves ``randomized`` by 4e-5). Since the native loop runs every preset (not only Gymnasium's
physics), the first value of the presets with optional terms is the native loop's: within 1e-5 of the torch loop's
recorded value for ``damped``, ``noisy``, ``wall`` and ``wall_soft``; for ``coulomb`` (exact-sign friction, where a
rounding difference at zero speed flips the friction) the torch loop gave -1461.1688837890624 and the native loop
-1461.0894241638184, which is recorded now.
"""

import pytest
import torch

import research.native as native
from research.evaluation import evaluate_policy
from research.policies import make_policy

#: ``evaluate_policy(policy, physics=preset)["return_mean"]`` of ``torch.manual_seed(0); make_policy()`` (1000
#: episodes; native loop where it applies) and of the same policy as a plain function (100 episodes, torch loop).
RECORDED = {
    "default": (-1208.429864440918, -1210.5525305175781),
    "coulomb": (-1461.0894241638184, -1423.8101251220703),
    "damped": (-1315.925555419922, -1293.0860192871094),
    "noisy": (-1200.048933227539, -1197.4165008544921),
    "randomized": (-1170.8428549194336, -1164.0724298095704),
    "wall": (-721.1183173370362, -676.15565574646),
    "wall_soft": (-1153.6909046936034, -1138.834721069336),
}


@pytest.mark.parametrize("preset", list(RECORDED))
def test_evaluations_are_the_recorded_ones(preset, monkeypatch):
    monkeypatch.setenv("RESEARCH_NATIVE_LANES", "16")
    monkeypatch.setattr(native, "_LIBS", {})
    torch.manual_seed(0)
    policy = make_policy()
    full, torch_loop = RECORDED[preset]
    assert evaluate_policy(policy, physics=preset)["return_mean"] == pytest.approx(full, rel=1e-5)
    assert evaluate_policy(lambda o: policy(o), physics=preset, num_episodes=100)["return_mean"] == pytest.approx(
        torch_loop, rel=1e-5)
