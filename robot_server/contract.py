"""The control contract shared by every producer of actions (teleop, policy, RL agent) and every backend.

An action is 7 numbers in [-1, 1], sent at `control_hz`:

    [dx, dy, dz,  rx, ry, rz,  gripper]

* dx, dy, dz: TCP translation, in the robot BASE frame, scaled by `max_step_m` (1.0 -> 2 cm).
* rx, ry, rz: TCP rotation as an axis-angle vector, in the robot BASE frame (applied on the left:
  q_target = exp(r) * q_current, like SERL), scaled by `max_step_rad` (1.0 -> 0.1 rad).
* gripper: > 0 means CLOSE, <= 0 means OPEN. It maps to a binary gripper command (1.0 closed, 0.0 open), because
  the real Franka Hand is commanded by discrete grasp/move actions; a continuous width would invite a grasp
  per control step.

Per-axis scaling alone would allow sqrt(3) times the step on a diagonal, so the translation and rotation vectors
are additionally clipped to `max_step_m` / `max_step_rad` in Euclidean norm: the step limit holds in any
direction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_DIM = 7


@dataclass(frozen=True)
class ActionContract:
    control_hz: float = 10.0
    max_step_m: float = 0.02
    max_step_rad: float = 0.1

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz

    def action_to_delta(self, a) -> tuple[np.ndarray, np.ndarray, float]:
        """Map a validated action in [-1, 1]^7 to (dpos [m], drot axis-angle [rad], gripper in {0.0, 1.0}).

        Values are clipped to [-1, 1] here as a last resort; rejecting out-of-range actions is the safety
        layer's job (it must see them to count them).
        """
        a = np.clip(np.asarray(a, dtype=float).reshape(ACTION_DIM), -1.0, 1.0)
        dpos = _clip_norm(a[0:3] * self.max_step_m, self.max_step_m)
        drot = _clip_norm(a[3:6] * self.max_step_rad, self.max_step_rad)
        gripper = 1.0 if a[6] > 0.0 else 0.0
        return dpos, drot, gripper

    def delta_to_action(self, dpos, drot, gripper: float) -> np.ndarray:
        """Inverse of action_to_delta for producers (scripted experts, teleop); clips to the contract."""
        a = np.empty(ACTION_DIM)
        a[0:3] = np.asarray(dpos, dtype=float) / self.max_step_m
        a[3:6] = np.asarray(drot, dtype=float) / self.max_step_rad
        a[6] = 1.0 if gripper > 0.5 else -1.0
        return np.clip(a, -1.0, 1.0)


def _clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v * (limit / n) if n > limit else v


DEFAULT_CONTRACT = ActionContract()


# ---------------------------------------------------------------------------------------------- observation state
# The one definition of the state layouts. The policy's proprioceptive input (also the tail of every recorded state
# vector, teleop.episode_format.STATE_TAIL):
POLICY_STATE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy", "ee_qz", "gripper_width")
POLICY_STATE_DIM = len(POLICY_STATE_NAMES)
# The contract env's observation state (robot_server.gym_env, metaworld_env): the policy's plus the TCP twist.
OBS_STATE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy", "ee_qz",
                   "ee_vx", "ee_vy", "ee_vz", "ee_wx", "ee_wy", "ee_wz", "gripper_width")
_POLICY_OF_OBS = [OBS_STATE_NAMES.index(n) for n in POLICY_STATE_NAMES]


def policy_state(ee_pos, ee_quat_wxyz, gripper_width) -> np.ndarray:
    """[ee xyz, quat wxyz, gripper width] float32 (POLICY_STATE_NAMES). Sizes are the caller's to check (the policy
    server answers a malformed robot state with its own error)."""
    return np.concatenate([np.asarray(ee_pos, np.float32).reshape(-1), np.asarray(ee_quat_wxyz, np.float32).reshape(-1),
                           np.asarray(gripper_width, np.float32).reshape(-1)])


def obs_state(ee_pos, ee_quat_wxyz, ee_vel, gripper_width) -> np.ndarray:
    """The env observation's state vector (OBS_STATE_NAMES), float32."""
    return np.concatenate([np.asarray(ee_pos, np.float32).reshape(-1), np.asarray(ee_quat_wxyz, np.float32).reshape(-1),
                           np.asarray(ee_vel, np.float32).reshape(-1), np.asarray(gripper_width, np.float32).reshape(-1)])


def policy_state_of_obs(state: np.ndarray) -> np.ndarray:
    """An env observation's state ([..., OBS_STATE_NAMES]) -> the policy's ([..., POLICY_STATE_NAMES])."""
    return np.asarray(state, np.float32)[..., _POLICY_OF_OBS]

