"""The Gymnasium env: the twin behind the robot server's safety layer, stepped in lock-step."""
import gymnasium as gym
import numpy as np
import pytest

import robot_server.gym_env  # noqa: F401  (registers irevla/Twin-v0)
from robot_server.gym_env import STATE_DIM, TwinEnv


@pytest.fixture(scope="module")
def env():
    e = TwinEnv(task="pick_red_block", image_size=64)
    yield e
    e.close()


def test_spaces_and_observation(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["state"].shape == (STATE_DIM,)
    assert obs["images"]["front"].shape == (64, 64, 3)
    assert info["instruction"] and info["category"] == "expert"
    assert env.action_space.shape == (7,)


def test_expert_solves_pick_through_the_safety_layer(env):
    wins = 0
    for seed in range(3):
        env.reset(seed=seed)
        for _ in range(env.twin.task.max_steps):
            _, reward, term, trunc, _ = env.step(env.expert_action(0.1))
            if term or trunc:
                break
        wins += int(term and reward == 1.0)
    assert wins == 3


def test_bad_actions_are_rejected_and_the_arm_holds(env):
    env.reset(seed=0)
    before = env.twin.state().ee_pos
    for bad in ([np.nan] * 7, [5.0, 0, 0, 0, 0, 0, 0], [0.1, 0.2]):
        _, _, _, _, info = env.step(np.array(bad, dtype=np.float64))
        assert "rejected" in info
    after = env.twin.state().ee_pos
    assert np.linalg.norm(after - before) < 0.005


def test_workspace_box_is_enforced(env):
    env.reset(seed=0)
    for _ in range(40):  # push down into the table as hard as the contract allows
        env.step(np.array([0, 0, -1, 0, 0, 0, -1], dtype=np.float32))
    z_min = env.core.safety.config.pos_min[2]
    assert env.twin.state().ee_pos[2] >= z_min - 0.005
    assert env.core.safety.stats["clamped"] > 0


def test_registered_with_gymnasium():
    e = gym.make("irevla/Twin-v0", task="pick_eggplant", render_images=False)
    obs, info = e.reset(seed=1)
    assert info["task"] == "pick_eggplant" and info["category"] == "rl"
    e.close()
