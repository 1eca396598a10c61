"""Frames of the pendulum: PendulumEnv(render_mode="rgb_array"), torchrl's VideoRecorder, and research.render's GIFs."""

import json
import math

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from research import render  # noqa: E402
from research.envs import PendulumEnv  # noqa: E402
from research.policies import make_actor, make_policy, save_policy  # noqa: E402


def rod_pixel(frame: np.ndarray, th: float) -> np.ndarray:
    """The pixel halfway along the rod at angle ``th`` (0 upright, counter-clockwise positive)."""
    size = frame.shape[0]
    r = 0.5 * size / 4.4  # half the rod's length, in Gymnasium's 4.4-wide window
    x, y = size / 2 - r * math.sin(th), size / 2 - r * math.cos(th)
    return frame[int(round(y)), int(round(x))]


def test_frame_draws_the_rod_where_the_angle_says():
    for th in (0.0, math.pi / 2, math.pi, -2.0):
        frame = render.pendulum_frame(th, size=96)
        assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
        assert np.abs(rod_pixel(frame, th).astype(int) - render.ROD_COLOR).max() < 40  # the rod is there
        assert rod_pixel(frame, th + math.pi).min() > 200  # and not on the opposite side (background)
    # the torque arrow: drawn for a torque, mirrored for the opposite one, absent for none
    push, pull = render.pendulum_frame(math.pi, 1.5, 96), render.pendulum_frame(math.pi, -1.5, 96)
    assert not np.array_equal(push, render.pendulum_frame(math.pi, None, 96))
    assert np.abs(push[:, ::-1].astype(int) - pull.astype(int)).mean() < 2


def test_env_returns_pixels_and_renders(tmp_path):
    from torchrl.envs import TransformedEnv
    from torchrl.envs.utils import check_env_specs
    from torchrl.record import CSVLogger, VideoRecorder

    env = PendulumEnv(seed=0, render_mode="rgb_array", render_size=48)
    check_env_specs(env)
    td = env.reset()
    assert td["pixels"].shape == (48, 48, 3) and td["pixels"].dtype == torch.uint8
    assert np.array_equal(env.render(), td["pixels"].numpy())
    assert np.array_equal(env.render(td), td["pixels"].numpy())

    recorded = TransformedEnv(PendulumEnv(seed=0, render_mode="rgb_array", render_size=48),
                              VideoRecorder(CSVLogger("pendulum", log_dir=str(tmp_path)), tag="clip", skip=1))
    rollout = recorded.rollout(2, make_actor(make_policy()))  # 3 frames: the reset and 2 steps
    assert rollout["next", "pixels"].shape == (2, 48, 48, 3)
    assert not torch.equal(rollout["pixels"][0], rollout["next", "pixels"][1])
    recorded.transform.dump()
    video = torch.load(tmp_path / "pendulum" / "videos" / "clip_0.pt")
    assert video.shape == (1, 3, 3, 48, 48) and video.dtype == torch.uint8

    batched = PendulumEnv(seed=0, render_mode="rgb_array", render_size=16)
    assert batched.reset(batched.gen_params(batch_size=[2, 3]))["pixels"].shape == (2, 3, 16, 16, 3)
    assert "pixels" not in PendulumEnv(seed=0).reset().keys()


def test_env_rejects_unknown_render_mode():
    with pytest.raises(ValueError, match="render_mode"):
        PendulumEnv(render_mode="human")
    with pytest.raises(RuntimeError, match="nothing to render"):
        PendulumEnv(render_mode="rgb_array").render()


def test_three_frame_animation_to_gif(tmp_path):
    torch.manual_seed(0)
    controllers = [render.Controller("a", render.PALETTE[0], make_policy()),
                   render.Controller("b", render.PALETTE[1], make_policy((8,)))]
    trajs = render.trajectories(controllers, th0=3.0, thdot0=0.5, steps=2)
    assert [t.th.shape for t in trajs] == [(3,), (3,)] and trajs[0].th[0] == pytest.approx(3.0)
    assert trajs[0].total_return == pytest.approx(trajs[0].running_return[-1])
    frames = render.animation_frames(trajs, panel=60, title="test")
    assert len(frames) == 3 and len({f.size for f in frames}) == 1
    path = render.save_gif(frames, tmp_path / "clip.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info["duration"] == 1000 // render.FPS == 50


def test_render_experiment_from_run_directories(tmp_path):
    exp = tmp_path / "exp"
    torch.manual_seed(1)
    for algo, returns in (("bptt", [-150.0, -160.0, -140.0]), ("ddpg", [-300.0])):
        for seed, ret in enumerate(returns):
            run = exp / algo / f"seed_{seed}"
            run.mkdir(parents=True)
            save_policy(make_policy((8,)), run / "policy.pt")
            (run / "summary.json").write_text(json.dumps({"algo": algo, "seed": seed, "eval": {"return_mean": ret}}))
    (exp / "experiment.json").write_text(json.dumps({"algos": ["ddpg", "bptt"]}))
    assert render.experiment_algos(exp) == ["ddpg", "bptt"]
    assert render.choose_run(exp, "bptt")[1] == 0  # -150 is the median of the three seeds
    assert render.choose_run(exp, "bptt", "best")[1] == 2
    written = render.render_experiment(exp, starts=[5], steps=2, panel=40, mp4="no", optimal=False)
    assert [p.name for p in written] == ["start_5.gif"]
    index = json.loads((exp / "media" / "index.json").read_text())
    assert index["animations"][0]["start_index"] == 5
    assert set(index["animations"][0]["returns"]) == {"ddpg", "bptt"}


# ---------------------------------------------------------------------------------------------------- any system
def _gif(path):
    with Image.open(path) as gif:
        return gif.n_frames, gif.size, gif.info["duration"]


def test_render_system_reference_and_policy(tmp_path):
    from research.systems import make

    system = make("cartpole")
    torch.manual_seed(0)
    policy = make_policy((8,), max_torque=system.max_action, obs_dim=system.obs_dim, act_dim=system.action_dim)
    controllers = [render.reference_controller(system), render.policy_controller(system, policy, "net")]
    # 2 starts x 2 controllers, 10 steps, every 2nd step (0.04 s of the cart-pole's 0.02 s): frames 0, 2, ..., 10
    (path,) = render.render_system(system, controllers, [0, 3], tmp_path / "cp.gif", steps=10, panel=48)
    assert _gif(path) == (6, (4 * 48, 18 + 16 + 48 + 30 + 18), 40)
    # the trajectories behind the frames: states [N, T + 1], actions within the bound as the step applies them
    states, actions, rewards = render.system_trajectories(system, controllers[0], system.initial_state((2,)), 10)
    assert states.shape == (2, 11, 4) and actions.shape == (2, 10, 1) and rewards.shape == (2, 10)
    assert actions.abs().max() <= system.max_action


def test_render_system_cli(tmp_path, capsys):
    out = tmp_path / "ref.gif"
    assert render.main(["--system", "cartpole", "--controller", "reference", "--starts", "0", "1", "--steps", "10",
                        "--every", "1", "--panel", "40", "--out", str(out)]) == 0
    assert _gif(out)[:2] == (11, (2 * 40, 18 + 16 + 40 + 30 + 18))
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the pendulum has no reference controller: a policy is needed
        render.main(["--system", "pendulum", "--steps", "2", "--out", str(tmp_path / "p.gif")])
    assert "reference_controller" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["pendulum", "acrobot"])
def test_render_system_other_systems(tmp_path, name):
    from research.systems import SYSTEMS, make

    if name not in SYSTEMS:
        pytest.skip(f"{name} is not registered")
    system = make(name)
    torch.manual_seed(0)
    policy = make_policy((8,), max_torque=system.max_action, obs_dim=system.obs_dim, act_dim=system.action_dim)
    policy_path = tmp_path / name / "seed_0" / "policy.pt"
    policy_path.parent.mkdir(parents=True)
    save_policy(policy, policy_path)
    out = tmp_path / f"{name}.gif"
    argv = ["--system", name, "--policy", str(policy_path), "--starts", "2", "5", "--steps", "10", "--panel", "40",
            "--out", str(out)]
    reference = render.reference_controller(system) is not None
    assert render.main(argv + (["--controller", "reference"] if reference else [])) == 0
    assert _gif(out)[:2] == (11, ((4 if reference else 2) * 40, 18 + 16 + 40 + 30 + 18))
