"""Checkpoint and resume inside a run: a run stopped after a checkpoint and continued by a fresh ``train()`` ends
exactly where an uninterrupted run ends (CPU): the same summary (but its wall-clock fields), the same metric rows
(but their wall-clock columns), the same policy and the same whole training state."""

import csv
import logging

import pytest
import torch

from research import harness
from research.algos.bptt import BPTT, BPTTConfig
from research.algos.bptt_finetune import BPTTFinetune, BPTTFinetuneConfig, FinetuneConfig
from research.algos.ddpg import DDPG, DDPGConfig
from research.algos.sac import SAC, SACConfig
from research.algos.shac import SHAC, SHACConfig
from research.algos.td3 import TD3, TD3Config
from research.config import EnvConfig, EvalConfig, config_hash
from research.harness import CheckpointError, checkpoint_info, read_checkpoint, train
from research.runs import RunWriter

#: Wall-clock fields: the only ones a resumed run may differ in.
CLOCKS = {"wall_time_s", "eval_time_s", "checkpoint_time_s", "resumed_after"}
EVERY_ITERATION = 1e-9  # checkpoint_every_s: a checkpoint after every iteration


class Killed(Exception):
    """Stands for the run's process being killed."""


def factory(cls, made, kill_at=None):
    """Builds ``cls``, records it in ``made``, and makes its ``step(kill_at)`` raise :class:`Killed` (the iteration
    after the last checkpoint never finishes)."""

    def build(config, run):
        algo = cls(config, run)
        made.append(algo)
        if kill_at is not None:
            step = algo.step

            def killed(iteration):
                if iteration == kill_at:
                    raise Killed(iteration)
                return step(iteration)

            algo.step = killed
        return algo

    return build


def flatten(state, prefix=""):
    """``{dotted key: leaf}`` of a nested state dict (tensors, numbers, ...)."""
    if isinstance(state, dict):
        out = {}
        for key, value in state.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for i, value in enumerate(state):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): state}


def assert_same_state(a, b):
    flat_a, flat_b = flatten(a), flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        other = flat_b[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        elif hasattr(value, "batch_size"):  # a TensorDict (the replay buffer's rows)
            assert (value == other).all(), key
        else:
            assert value == other, key


def rows_without_clocks(path):
    return [{k: v for k, v in row.items() if k not in CLOCKS} for row in csv.DictReader(path.open())]


def check_resume_is_exact(tmp_path, cls, config, name, kills):
    """Runs ``config`` uninterrupted (no checkpoints), then killed at each iteration of ``kills`` in turn and resumed
    by a fresh ``train()``; asserts both end identically."""
    made = []
    reference = train(config.__class__(**{**vars(config), "checkpoint_every_s": 0.0}), factory(cls, made),
                      RunWriter(tmp_path / "reference", name, config), quiet=True, name=name)
    assert not (tmp_path / "reference" / "checkpoint.pt").exists()
    reference_state = made[-1].state_dict()

    resumed_dir = tmp_path / "resumed"
    for kill_at in kills:
        with pytest.raises(Killed):
            train(config, factory(cls, made, kill_at), RunWriter(resumed_dir, name, config), quiet=True, name=name)
        info = checkpoint_info(resumed_dir / "checkpoint.pt")
        assert info["iteration"] == kill_at - 1 and not info["done"] and info["config_hash"] == config_hash(config)
        # what the killed process logged after its checkpoint is dropped on resume
        assert max(int(r["iteration"]) for r in csv.DictReader((resumed_dir / "metrics.csv").open())) <= kill_at - 1
    summary = train(config, factory(cls, made), RunWriter(resumed_dir, name, config), quiet=True, name=name)

    assert summary["resumed_after"] == [k - 1 for k in kills]
    assert {k: v for k, v in summary.items() if k not in CLOCKS} == {
        k: v for k, v in reference.items() if k not in CLOCKS}
    assert summary["env_steps"] == reference["env_steps"] and summary["eval"] == reference["eval"]
    for p, q in zip(made[0].policy.parameters(), made[-1].policy.parameters(), strict=True):
        assert torch.equal(p, q)
    assert_same_state(made[-1].state_dict(), reference_state)
    assert rows_without_clocks(resumed_dir / "metrics.csv") == rows_without_clocks(tmp_path / "reference" / "metrics.csv")
    final = read_checkpoint(resumed_dir / "checkpoint.pt")
    assert final["done"] and final["iteration"] == reference["iterations"]
    return reference, summary


def bptt_config(**overrides):
    return BPTTConfig(**{"iterations": 10, "num_envs": 8, "horizon": 12, "hidden_sizes": [8],
                         "checkpoint_every_s": EVERY_ITERATION, "eval": EvalConfig(interval_env_steps=300, episodes=8),
                         **overrides})


def test_bptt_resumes_exactly(tmp_path):
    reference, _ = check_resume_is_exact(tmp_path, BPTT, bptt_config(), "bptt", kills=[4])
    assert reference["iterations"] == 10 and reference["env_steps"] == 10 * 8 * 12


def test_truncated_bptt_on_randomized_physics_resumes_exactly(tmp_path):
    # windows of 5 steps in episodes of 12: resets, per-episode parameter draws and carried states cross the kills
    config = bptt_config(window=5, env=EnvConfig(physics="randomized", episode_length=12), iterations=12)
    check_resume_is_exact(tmp_path, BPTT, config, "bptt", kills=[3, 8])


def test_bptt_finetune_resumes_exactly_in_its_second_stage(tmp_path):
    config = BPTTFinetuneConfig(iterations=4, num_envs=8, horizon=12, hidden_sizes=[8],
                                finetune=FinetuneConfig(iterations=4, num_envs=8, horizon=20),
                                checkpoint_every_s=EVERY_ITERATION, eval=EvalConfig(interval_env_steps=300, episodes=8))
    check_resume_is_exact(tmp_path, BPTTFinetune, config, "bptt_finetune", kills=[3, 7])


def test_shac_resumes_exactly(tmp_path):
    config = SHACConfig(iterations=8, num_envs=8, window=6, hidden_sizes=[8], critic_hidden_sizes=[8],
                        critic_iterations=2, critic_minibatches=2, env=EnvConfig(episode_length=20),
                        checkpoint_every_s=EVERY_ITERATION, eval=EvalConfig(interval_env_steps=100, episodes=8))
    check_resume_is_exact(tmp_path, SHAC, config, "shac", kills=[5])


def off_policy_config(cls, **overrides):
    return cls(total_env_steps=400, warmup_env_steps=100, frames_per_batch=50, num_envs=2, batch_size=16,
               updates_per_env_step=0.2, hidden_sizes=[16], critic_hidden_sizes=[16], buffer_size=220,
               env=EnvConfig(episode_length=30), checkpoint_every_s=EVERY_ITERATION,
               eval=EvalConfig(interval_env_steps=150, episodes=8), **overrides)


def test_ddpg_with_the_simulator_collector_resumes_exactly(tmp_path):
    # the 220-row buffer has wrapped around at the second kill: the writer's position must come back
    config = off_policy_config(DDPGConfig)
    reference, _ = check_resume_is_exact(tmp_path, DDPG, config, "ddpg", kills=[2, 7])
    assert reference["updates"] == 6 * 10 and reference["env_steps"] == 400
    rows = read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["algo_state"]["buffer"]["data"]["observation"]
    # the filled rows only, not the storage they are a view of (a 1M-row buffer would be tens of MB)
    assert rows.shape == (220, 3) and rows.untyped_storage().nbytes() == rows.numel() * rows.element_size()


@pytest.mark.parametrize(("cls", "algo_cls", "name"), [(TD3Config, TD3, "td3"), (SACConfig, SAC, "sac")])
def test_td3_and_sac_resume_exactly(tmp_path, cls, algo_cls, name):
    check_resume_is_exact(tmp_path, algo_cls, off_policy_config(cls), name, kills=[5])


def test_a_run_killed_during_its_final_evaluation_resumes_there(tmp_path, monkeypatch):
    config = bptt_config(iterations=3)  # evaluated before training and at the end (288 env steps) only
    reference = train(config, BPTT, RunWriter(tmp_path / "reference", "bptt", config), quiet=True, name="bptt")
    evaluate, calls = harness.Evaluator.__call__, []

    def killed_in_the_final_one(self, policy, env_steps):
        calls.append(env_steps)
        if len(calls) == 2:
            raise Killed
        return evaluate(self, policy, env_steps)

    monkeypatch.setattr(harness.Evaluator, "__call__", killed_in_the_final_one)
    with pytest.raises(Killed):
        train(config, BPTT, RunWriter(tmp_path / "run", "bptt", config), quiet=True, name="bptt")
    monkeypatch.undo()
    info = checkpoint_info(tmp_path / "run" / "checkpoint.pt")
    assert calls == [0, 288] and info["done"] and info["iteration"] == 3
    made = []
    again = train(config, factory(BPTT, made), RunWriter(tmp_path / "run", "bptt", config), quiet=True, name="bptt")
    assert again["resumed_after"] == [3] and again["iterations"] == 3
    assert {k: v for k, v in again.items() if k not in CLOCKS} == {
        k: v for k, v in reference.items() if k not in CLOCKS}


def test_a_checkpoint_of_another_config_is_ignored_with_a_warning(tmp_path, caplog):
    config = bptt_config(iterations=2)
    train(config, BPTT, RunWriter(tmp_path, "bptt", config), quiet=True, name="bptt")
    (tmp_path / "summary.json").unlink()  # unfinished
    other = bptt_config(iterations=3)
    with caplog.at_level(logging.WARNING, logger="research.harness"):
        summary = train(other, BPTT, RunWriter(tmp_path, "bptt", other), quiet=True, name="bptt")
    assert "written by another run" in caplog.text and "starting from scratch" in caplog.text
    assert "resumed_after" not in summary and summary["iterations"] == 3
    assert read_checkpoint(tmp_path / "checkpoint.pt")["config_hash"] == config_hash(other)


def test_a_corrupt_checkpoint_is_a_one_line_error_naming_the_file(tmp_path):
    config = bptt_config(iterations=2)
    train(config, BPTT, RunWriter(tmp_path, "bptt", config), quiet=True, name="bptt")
    (tmp_path / "summary.json").unlink()  # unfinished
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert checkpoint_info(path) is None
    with pytest.raises(CheckpointError) as error:
        train(config, BPTT, RunWriter(tmp_path, "bptt", config), quiet=True, name="bptt")
    message = str(error.value)
    assert str(path) in message and "\n" not in message and "delete it" in message


def test_the_train_command_line_resumes_and_names_a_corrupt_checkpoint_in_one_line(tmp_path, capsys):
    from research.train import main

    def evaluation(stdout):
        return stdout.split('"eval"')[1].split("}")[0]

    argv = ["--algo", "bptt", "--results", str(tmp_path), "--experiment", "cli", "--quiet", "--set", "iterations=3",
            "--set", "num_envs=8", "--set", "horizon=12", "--set", "hidden_sizes=[8]", "--set", "eval.episodes=8"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0  # a finished run trains again from scratch, not from its final checkpoint
    again = capsys.readouterr().out
    assert "resumed_after" not in again and evaluation(again) == evaluation(first)
    run = tmp_path / "cli" / "bptt" / "seed_0"
    (run / "summary.json").unlink()  # killed during its final evaluation: that is all that runs again
    assert main(argv) == 0
    resumed = capsys.readouterr().out
    assert '"resumed_after": [\n    3\n  ]' in resumed and evaluation(resumed) == evaluation(first)
    (run / "summary.json").unlink()
    path = run / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(path) in err and err.count("\n") == 1


def test_checkpoints_are_written_atomically_and_leave_no_temporary_file(tmp_path):
    config = bptt_config(iterations=3)
    train(config, BPTT, RunWriter(tmp_path, "bptt", config), quiet=True, name="bptt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "config.json", "metrics.csv", "policy.pt",
                                                          "summary.json"]


def test_checkpoint_every_s_is_left_out_of_the_config_hash_and_checked():
    assert config_hash(bptt_config()) == config_hash(BPTTConfig(iterations=10, num_envs=8, horizon=12,
                                                                hidden_sizes=[8],
                                                                eval=EvalConfig(interval_env_steps=300, episodes=8)))
    with pytest.raises(ValueError, match="checkpoint_every_s"):
        BPTTConfig(checkpoint_every_s=-1.0)


def test_runs_on_torchrls_collector_are_not_checkpointed(tmp_path, caplog):
    config = off_policy_config(DDPGConfig, noise="ou")
    with caplog.at_level(logging.INFO, logger="research.harness"):
        train(config, DDPG, RunWriter(tmp_path, "ddpg", config), quiet=True, name="ddpg")
    assert "not checkpointed" in caplog.text and not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.cuda
@pytest.mark.parametrize("algo", ["bptt", "ddpg"])
def test_a_cuda_run_resumes(tmp_path, algo):
    """On CUDA the state (generators included) comes back on the device; the numbers are compared to float
    tolerance only (CUDA kernels need not be bit-reproducible)."""
    if algo == "bptt":
        cls, config = BPTT, bptt_config(device="cuda", window=5, env=EnvConfig(episode_length=12))
    else:
        cls, config = DDPG, off_policy_config(DDPGConfig, device="cuda")
    made = []
    reference = train(config, factory(cls, made), RunWriter(tmp_path / "reference", algo, config), quiet=True,
                      name=algo)
    with pytest.raises(Killed):
        train(config, factory(cls, made, 4), RunWriter(tmp_path / "resumed", algo, config), quiet=True, name=algo)
    summary = train(config, factory(cls, made), RunWriter(tmp_path / "resumed", algo, config), quiet=True, name=algo)
    assert summary["resumed_after"] == [3] and summary["env_steps"] == reference["env_steps"]
    assert summary["iterations"] == reference["iterations"]
    for p, q in zip(made[0].policy.parameters(), made[-1].policy.parameters(), strict=True):
        assert p.device.type == "cuda"
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
