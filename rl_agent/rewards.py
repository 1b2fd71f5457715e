"""Binary success rewards behind one interface (stage 1): the twin's predicate, a success classifier on latents, or
the operator (a key on the teleop device, or a ROS 2 Trigger service on the real robot).

    reward = make_reward_source(cfg, classifier=...)     # cfg.source: twin | classifier | operator
    reward.reset()                                      # at every episode start
    verdict = reward(obs, info, events)                 # after every env step
    verdict.success, verdict.end, verdict.score

`events` are the operator's events of this step ("success" / "failure", from teleop.mapping key or button
bindings); the actor node's services call `mark()` directly. The reward of a step is 1.0 when `success`, else 0.0;
`end` finishes the episode (success, or the operator's failure mark).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

REWARD_SOURCES = ("twin", "classifier", "operator")


@dataclass(frozen=True)
class RewardConfig:
    source: str = "twin"  # twin | classifier | operator
    classifier_path: Optional[str] = None  # a SuccessClassifier saved by rl_agent.reward_classifier
    threshold: float = 0.5  # classifier: success when P(success) >= threshold ...
    consecutive: int = 1  # ... for this many consecutive frames (filters single-frame false positives)

    def __post_init__(self):
        if self.source not in REWARD_SOURCES:
            raise ValueError(f"reward.source must be one of {REWARD_SOURCES}, got {self.source!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"reward.threshold must be in (0, 1), got {self.threshold}")
        if self.consecutive < 1:
            raise ValueError(f"reward.consecutive must be >= 1, got {self.consecutive}")
        if self.source == "classifier" and not self.classifier_path:
            raise ValueError("reward.source 'classifier' needs reward.classifier_path")


@dataclass(frozen=True)
class Verdict:
    success: bool
    end: bool
    source: str
    score: Optional[float] = None  # classifier probability

    @property
    def reward(self) -> float:
        return 1.0 if self.success else 0.0


class RewardSource:
    name = "base"

    def reset(self) -> None:
        pass

    def __call__(self, obs: dict, info: dict, events: Sequence[str] = ()) -> Verdict:
        raise NotImplementedError


class TwinPredicateReward(RewardSource):
    """The twin's task predicate (privileged; sim only): info["success"] from robot_server.gym_env.TwinEnv."""
    name = "twin"

    def __call__(self, obs, info, events=()) -> Verdict:
        if "success" not in info:
            raise KeyError("the twin reward needs info['success'] (robot_server.gym_env.TwinEnv provides it)")
        ok = bool(info["success"])
        return Verdict(ok, ok, self.name)


class ClassifierReward(RewardSource):
    """A success classifier on the observation's latents: success after `consecutive` frames >= threshold."""
    name = "classifier"

    def __init__(self, classifier: Any, threshold: float = 0.5, consecutive: int = 1):
        self.classifier, self.threshold, self.consecutive = classifier, float(threshold), int(consecutive)
        self._run = 0
        self.last_score: Optional[float] = None

    def reset(self) -> None:
        self._run = 0

    def __call__(self, obs, info, events=()) -> Verdict:
        p = float(np.asarray(self.classifier.predict_proba(np.asarray(obs["latents"])[None])).reshape(-1)[0])
        self.last_score = p
        self._run = self._run + 1 if p >= self.threshold else 0
        ok = self._run >= self.consecutive
        return Verdict(ok, ok, self.name, p)


class OperatorReward(RewardSource):
    """The operator says success or failure: a bound key / button (events) or `mark()` (a ROS 2 service handler,
    any thread). Until then the step reward is 0 and the episode goes on (up to its step limit)."""
    name = "operator"

    def __init__(self):
        self._lock = threading.Lock()
        self._mark: Optional[bool] = None
        self.marks = 0

    def mark(self, success: bool) -> None:
        with self._lock:
            self._mark = bool(success)
            self.marks += 1

    def reset(self) -> None:
        with self._lock:
            self._mark = None

    def __call__(self, obs, info, events=()) -> Verdict:
        for e in events:
            if e in ("success", "failure"):
                self.mark(e == "success")
        with self._lock:
            m = self._mark
        if m is None:
            return Verdict(False, False, self.name)
        return Verdict(m, True, self.name)


class AnyOfReward(RewardSource):
    """Success when any source says so (e.g. the twin's predicate, or the operator's mark through the actor's
    service); the episode ends when any source ends it."""
    name = "any"

    def __init__(self, sources: Sequence[RewardSource]):
        self.sources = list(sources)

    def reset(self) -> None:
        for s in self.sources:
            s.reset()

    def mark(self, success: bool) -> None:
        for s in self.sources:
            if hasattr(s, "mark"):
                s.mark(success)

    def __call__(self, obs, info, events=()) -> Verdict:
        verdicts = [s(obs, info, events) for s in self.sources]
        for v in verdicts:
            if v.success:
                return v
        for v in verdicts:
            if v.end:
                return v
        return Verdict(False, False, self.name, next((v.score for v in verdicts if v.score is not None), None))


def make_reward_source(cfg: RewardConfig, classifier: Any = None) -> RewardSource:
    if cfg.source == "twin":
        return TwinPredicateReward()
    if cfg.source == "operator":
        return OperatorReward()
    if classifier is None:
        from rl_agent.reward_classifier import SuccessClassifier
        classifier = SuccessClassifier.load(cfg.classifier_path)
    return ClassifierReward(classifier, cfg.threshold, cfg.consecutive)
