import time

import torch

from research.config import EvalConfig
from research.training import Budget, Evaluator


def test_evaluation_time_is_kept_out_of_the_training_wall_clock():
    def slow_policy(observation):
        time.sleep(0.001)  # 200 steps: at least 0.2 s inside the evaluator
        return torch.zeros(*observation.shape[:-1], 1)

    budget = Budget()
    evaluator = Evaluator(EvalConfig(interval_env_steps=100, episodes=4), torch.device("cpu"), torch.float32, budget)
    result = evaluator(slow_policy, env_steps=0)
    assert result["episodes"] == 4
    assert budget.eval_time_s >= 0.2
    assert budget.wall_time_s < budget.eval_time_s
    assert evaluator.next_at == 100 and evaluator.due(100) and not evaluator.due(99)


def test_budget_without_evaluations_counts_all_time():
    budget = Budget(max_wall_time_s=0.05)
    budget.add_steps(7)
    assert budget.env_steps == 7 and not budget.out_of_time()
    time.sleep(0.06)
    assert budget.out_of_time() and budget.wall_time_s >= 0.06
