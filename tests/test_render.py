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
