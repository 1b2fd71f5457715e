"""The latent environment of stage 1: the twin (robot_server.gym_env.TwinEnv, lock-step at the contract's 10 Hz in
simulated time) whose camera images are encoded ONCE per observation by the frozen VLA.

    encoder = LatentEncoder(vla)                       # VLA.encode under torch.inference_mode
    env = LatentEnv(encoder, task="pick_eggplant")
    obs, info = env.reset(seed=3)                      # obs = {"latents": [N, d] float32, "state": [8] float32}
    obs, reward, terminated, truncated, info = env.step(action)
    env.trace                                          # the current episode's raw images, robot states, actions

The observation is what rl_agent's agent and buffers take (rl_api.md): the VLM latents [N, d] (N, d =
VLA.num_latent_tokens, VLA.latent_dim) and the policy state (policy.config.POLICY_STATE_NAMES: ee xyz, quat wxyz,
gripper width). Images are rendered at the VLA's input size by default (no resize in encode). The raw images of the
CURRENT episode stay in memory (`trace`) so that a successful episode can be written to the expert-set format
(rl_agent/harvest.py); they are dropped at the next reset.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from robot_server.contract import policy_state
from robot_server.safety import R_NONFINITE, R_SHAPE, R_STATE_OUTSIDE


def twin_policy_state(twin_state) -> np.ndarray:
    """TwinState -> the policy's 8-D state (robot_server.contract.POLICY_STATE_NAMES)."""
    return policy_state(twin_state.ee_pos, twin_state.ee_quat, twin_state.gripper_width)


def robot_record(twin_state) -> dict:
    """TwinState -> the state mapping teleop.recorder.EpisodeRecorder.add_step takes."""
    return {"q": np.array(twin_state.q), "dq": np.array(twin_state.dq), "ee_pos": np.array(twin_state.ee_pos),
            "ee_quat": np.array(twin_state.ee_quat), "gripper_width": float(twin_state.gripper_width)}


class LatentEncoder:
    """Images {camera: HxWx3 uint8} + instruction -> latents [N, d] float32 (numpy), through the frozen VLA."""

    def __init__(self, vla, torch_threads: Optional[int] = None):
        import torch
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.vla = vla.eval()
        for p in self.vla.parameters():
            p.requires_grad_(False)
        self.cameras: tuple[str, ...] = tuple(vla.cfg.cameras)
        self.image_size: int = int(vla.image_size)
        self.latent_shape: tuple[int, int] = (int(vla.num_latent_tokens), int(vla.latent_dim))
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, images: dict, instruction: str) -> np.ndarray:
        return self.encode_batch([images], [instruction])[0]

    def encode_batch(self, images: Sequence[dict], instructions: Sequence[str]) -> np.ndarray:
        import torch
        t0 = time.perf_counter()
        stacked = np.stack([np.stack([np.asarray(im[c]) for c in self.cameras]) for im in images])  # [B, C, H, W, 3]
        with torch.inference_mode():
            lat = self.vla.encode(stacked, list(instructions))
        out = lat.float().cpu().numpy()
        self.calls += len(images)
        self.seconds += time.perf_counter() - t0
        return out

    def head_action(self, obs: dict) -> np.ndarray:
        """The VLA head's (deterministic, stage-0) action for one observation, clipped to [-1, 1]."""
        return self.vla.act_from_latents(obs["latents"][None], obs["state"][None])[0].astype(np.float32)


@dataclass
class EpisodeTrace:
    """One episode as the recorder needs it: observation t = (images[t], robot[t]); action t leads to t+1."""
    task: str
    instruction: str
    seed: int
    category: str = ""
    images: list = field(default_factory=list)  # T+1 dicts {camera: HxWx3 uint8} (empty when keep_images=False)
    robot: list = field(default_factory=list)  # T+1 recorder state dicts
    actions: list = field(default_factory=list)  # T (7,) float32, the EXECUTED actions (after interventions)
    rewards: list = field(default_factory=list)
    intervened: list = field(default_factory=list)  # T bools
    success: bool = False
    ended_by: str = ""  # the reward source whose verdict ended the episode ("" = step limit)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def interventions(self) -> int:
        """Intervention segments (a takeover that lasts several steps counts once)."""
        flags = np.asarray(self.intervened, bool)
        return int(np.sum(flags & ~np.r_[False, flags[:-1]])) if flags.size else 0


class LatentEnv:
    """TwinEnv + LatentEncoder. Reward and termination here are the twin's predicate; rl_agent.rewards may replace
    them (classifier, operator)."""

    def __init__(self, encoder: LatentEncoder, task: str, task_files: Sequence[str] = (),
                 image_size: Optional[int] = None, render_detail: str = "fast", keep_images: bool = True,
                 max_episode_steps: Optional[int] = None, safety_config=None):
        from robot_server.gym_env import make_env
        self.encoder = encoder
        self.image_size = int(image_size or encoder.image_size)
        self.env = make_env(task, encoder.cameras, self.image_size, task_files=tuple(task_files),
                            render_detail=render_detail, safety_config=safety_config)
        self.task = task
        self.keep_images = keep_images
        spec = self.env.twin.registry.get(task)
        self.max_episode_steps = int(max_episode_steps or spec.max_steps)
        self.category = spec.category
        self.trace: Optional[EpisodeTrace] = None
        self._steps = 0
        self.env_seconds = 0.0  # physics + rendering (the encoder keeps its own time)
        self.safety_stops = 0  # episodes cut because the arm left the safety layer's workspace
        # Actions the safety layer rejected (out of range, non-finite, ...): LatentEnv no longer clips them away.
        self.safety_rejections = 0
        self.safety_rejection_reasons: dict[str, int] = {}

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.encoder.latent_shape

    @property
    def cameras(self) -> tuple[str, ...]:
        return self.encoder.cameras

    @property
    def instruction(self) -> str:
        return self.env.instruction

    @property
    def twin(self):
        return self.env.twin

    def _observe(self, raw: dict) -> dict:
        s = self.env.twin.state()
        obs = {"latents": self.encoder(raw["images"], self.env.instruction), "state": twin_policy_state(s)}
        if self.trace is not None:
            if self.keep_images:
                self.trace.images.append(raw["images"])
            self.trace.robot.append(robot_record(s))
        return obs

    def reset(self, seed: int) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        raw, info = self.env.reset(seed=int(seed))
        self.env_seconds += time.perf_counter() - t0
        self._steps = 0
        self.trace = EpisodeTrace(self.task, info["instruction"], int(seed), self.category)
        return self._observe(raw), info

    @property
    def safety_stats(self) -> dict:
        """The safety layer's counters (accepted / rejected / clamped / holds / homes and rejections by reason)."""
        return self.env.safety_stats

    def step(self, action, intervened: bool = False) -> tuple[dict, float, bool, bool, dict]:
        """One contract step. The action goes to the safety layer as given (no clipping here): out-of-range,
        non-finite or mis-shaped actions are rejected and counted there (the arm holds for that step), in
        `info["safety"]` and `self.safety_rejections`. A non-finite or mis-shaped action then raises ValueError
        (after the layer counted it): it would poison the replay buffers."""
        try:
            a = np.asarray(action, dtype=np.float64).reshape(-1)  # a (1, 7) batch row is still one action
        except (TypeError, ValueError):
            a = action  # not numeric: the layer rejects it as such
        t0 = time.perf_counter()
        raw, reward, terminated, _, info = self.env.step(a)
        self.env_seconds += time.perf_counter() - t0
        self._steps += 1
        rejected = info.get("rejected")
        if rejected is not None:
            self.safety_rejections += 1
            self.safety_rejection_reasons[rejected] = self.safety_rejection_reasons.get(rejected, 0) + 1
        info["safety"] = {"rejected": rejected or "", "rejections": self.safety_rejections,
                          "clamped": int(self.safety_stats["clamped"])}
        if rejected in (R_SHAPE, R_NONFINITE):
            raise ValueError(f"action must be 7 finite numbers in [-1, 1], got {str(action)[:200]}: "
                             f"rejected by the safety layer ({rejected})")
        a = np.asarray(a, dtype=np.float32)  # recorded as given (the layer clamps only the resulting target)
        obs = self._observe(raw)
        truncated = self._steps >= self.max_episode_steps and not terminated
        tr = self.trace
        if rejected == R_STATE_OUTSIDE and not terminated:
            # Exploration pushed the arm past the safety margins: the safety layer now rejects every command until
            # the arm is homed, so the rest of the episode would be wasted; the next reset homes it.
            truncated = True
            tr.ended_by = "safety"
            self.safety_stops += 1
        tr.actions.append(a)
        tr.rewards.append(float(reward))
        tr.intervened.append(bool(intervened))
        tr.success = tr.success or bool(terminated)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def expert_action(self, noise: float = 0.0) -> np.ndarray:
        return self.env.expert_action(noise)

    def episode_timing(self) -> dict:
        """Control timing for the episode log: none here (the twin steps exactly one control period per action)."""
        return {}

    def close(self) -> None:
        self.env.close()
