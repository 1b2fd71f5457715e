"""The stage-1 RL session's configuration (`irevla rl-session`, config/rl_session.yaml): one dataclass per YAML
section, gathered in SessionConfig (from_dict / from_yaml / to_dict through teleop.config). Pure data: no JAX, no
torch. The session job (rl_agent/jobs/session.py), the ROS actor (its DemoConfig) and `irevla iterate` read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from rl_agent.interventions import InterventionConfig
from rl_agent.rewards import RewardConfig
from teleop.config import from_dict, load_yaml, to_dict

PathLike = Union[str, Path]
DEMO_SOURCES = ("vla", "expert", "mixed")


@dataclass
class EnvConfig:
    task_files: list[str] = field(default_factory=list)  # extra task registries (YAML)
    image_size: Optional[int] = None  # render size; None = the VLA's input size (no resize in encode)
    render_detail: str = "fast"
    max_episode_steps: Optional[int] = None  # None = the task's max_steps
    torch_threads: int = 1  # the VLA encode at batch 1 gains nothing from more; JAX keeps the other core busy


@dataclass
class DemoConfig:
    count: int = 20  # successful demos wanted (the paper: 20 from the zero-shot VLA)
    source: str = "vla"  # vla | expert | mixed (VLA first, scripted expert tops up)
    max_attempts: Optional[int] = None  # VLA attempts at most (None: 3 x count)
    expert_max_attempts: Optional[int] = None  # scripted expert attempts at most (None: 2 x count)
    action_noise: float = 0.05  # std of Gaussian noise on the VLA head's action (contract units)
    expert_noise: float = 0.0
    failed_to_online: bool = True  # failed VLA attempts are real off-policy data: into the online buffer

    def __post_init__(self):
        if self.source not in DEMO_SOURCES:
            raise ValueError(f"demos.source must be one of {DEMO_SOURCES}, got {self.source!r}")
        if self.max_attempts is None:
            self.max_attempts = 3 * self.count
        if self.expert_max_attempts is None:
            self.expert_max_attempts = 2 * self.count
        if self.count < 0 or self.max_attempts < 0 or self.expert_max_attempts < 0 or self.action_noise < 0:
            raise ValueError("demos: count, max_attempts, expert_max_attempts and action_noise must be >= 0")


@dataclass
class TrainConfig:
    updates_per_step: float = 1.0  # update-to-data ratio in-process (fractions accumulate)
    learning_starts: int = 100  # online transitions before the first update
    online_capacity: int = 200_000
    demo_capacity: int = 20_000
    memory_budget_gb: Optional[float] = None  # per buffer (rl_agent.buffers caps its capacity to fit)
    # exploration noise of the RL episodes: 0 white (per step, SERL's); 1 pink (one correlated sequence per episode)
    exploration_beta: float = 0.0

    def __post_init__(self):
        if self.updates_per_step < 0 or self.learning_starts < 0:
            raise ValueError("train.updates_per_step and train.learning_starts must be >= 0")
        if not 0.0 <= self.exploration_beta <= 2.0:
            raise ValueError(f"train.exploration_beta must be in [0, 2] (0 white, 1 pink, 2 red), got "
                             f"{self.exploration_beta}")


@dataclass
class CheckpointConfig:
    every_transitions: int = 500  # plus at most one episode: <= 1,000 transitions lost on a SIGKILL
    every_minutes: float = 3.0
    keep: int = 2


@dataclass
class EvalConfig:
    episodes: int = 10  # deterministic episodes before and after (0: skip)
    handback: bool = True  # also evaluate the RL head through the VLA after the hand-back


@dataclass
class HarvestConfig:
    enabled: bool = True
    # rl: successful RL episodes; vla_demo: the zero-shot VLA's successful demos; expert_demo: scripted top-ups
    # (off by default: the RL task has no expert data in iRe-VLA).
    sources: list[str] = field(default_factory=lambda: ["rl", "vla_demo"])
    # Labels of RL episodes for stage 2: the executed, exploration-noised action (executed, what the paper
    # replays) or the actor's deterministic action at each visited state (policy_mean). rl_agent/harvest.py and the
    # README give the measured trade-off.
    action_label: str = "executed"

    def __post_init__(self):
        from rl_agent.harvest import ACTION_LABELS
        if self.action_label not in ACTION_LABELS:
            raise ValueError(f"harvest.action_label must be one of {ACTION_LABELS}, got {self.action_label!r}")


@dataclass
class LogConfig:
    progress: bool = True  # tqdm line
    tensorboard: bool = True
    plot: bool = True


@dataclass
class SessionConfig:
    task: str = "pick_eggplant"
    seed: int = 0
    minutes: Optional[float] = 60.0  # wall-clock budget of the training phase
    max_episodes: Optional[int] = None  # training episodes (whichever budget ends first)
    max_env_steps: Optional[int] = None  # online env steps
    sac: dict[str, Any] = field(default_factory=dict)  # SACConfig overrides (architecture comes from the VLA head)
    env: EnvConfig = field(default_factory=EnvConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    interventions: InterventionConfig = field(default_factory=InterventionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Persistent XLA compilation cache ($IREVLA_CACHE/jax): the SAC update's compilation (tens of seconds on a
    # small CPU) is paid once per configuration, not in every session, resume and actor/learner start.
    compilation_cache: bool = True

    def __post_init__(self):
        if self.minutes is None and self.max_episodes is None and self.max_env_steps is None:
            raise ValueError("give a budget: minutes, max_episodes or max_env_steps")
        if self.reward.source == "operator" and not self.interventions.enabled:
            raise ValueError("reward.source 'operator' in-process reads the operator's success/failure keys from the "
                             "teleop device: enable interventions (on the robot, rl_actor's mark_success service)")

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "SessionConfig":
        return from_dict(cls, data)

    @classmethod
    def from_yaml(cls, path: PathLike, section: Optional[str] = None) -> "SessionConfig":
        return load_yaml(cls, path, section)

    def to_dict(self) -> dict:
        return to_dict(self)



def session_section(path: Optional[PathLike]) -> dict:
    """The session settings of a YAML file as plain data: its `session:` section (config/rl_session.yaml layout) or
    the whole document; {} without a path. The one reader of that section (rl-session, iterate, the RL nodes)."""
    if not path:
        return {}
    import yaml
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    return dict(doc.get("session", doc) or {})


def merge_sections(base: dict, overrides: dict) -> dict:
    """`overrides` on top of `base`; sections (dicts) merge key by key, so `env: {task_files: ...}` keeps
    `env: {image_size: ...}`."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
