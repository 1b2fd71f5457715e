"""Shared settings of the RL session / transport tests: one tiny VLA and one small SAC configuration, so that the
persistent JAX compilation cache compiles the SAC update once for all of them (and for their subprocesses)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REACH_TASKS = str(REPO / "tests" / "data" / "rl_reach_tasks.yaml")

# A random tiny BLIP-2 VLA: 64 px, one camera, N = 4 query + 32 text tokens of d = 64.
TINY_VLA = {"backbone": {"tiny": {"image_size": 64, "patch_size": 16, "hidden": 64, "vision_layers": 1,
                                  "qformer_layers": 1, "text_layers": 1, "heads": 2, "num_query_tokens": 4}},
            "head": {"learned_tokens": 4, "token_learner_hidden": 32, "hidden_dims": [64, 64]},
            "cameras": ["front"], "max_text_tokens": 32, "backbone_training": "full"}
SMALL_SAC = {"critic_ensemble_size": 2, "batch_size": 64, "critic_actor_ratio": 2}


def build_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A stage-0-shaped checkpoint of an untrained tiny VLA (its head is random: zero-shot success ~0)."""
    from policy.config import VLAConfig
    from policy.model import build_vla
    vla = build_vla(VLAConfig.from_dict(TINY_VLA), seed=seed)
    return vla.save(directory)


def shared_tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint, built once per pytest run and shared by the RL test modules."""
    d = Path(tmp_path_factory.getbasetemp()) / "rl_tiny_stage0"
    if not (d / "vla_config.yaml").is_file():
        build_tiny_checkpoint(d)
    return d


def reach_session(**overrides) -> dict:
    """SessionConfig data for the reach task with the small agent (tests override budgets etc.)."""
    data = {"task": "reach_point", "seed": 0, "minutes": None, "max_episodes": 10, "sac": dict(SMALL_SAC),
            "env": {"task_files": [REACH_TASKS]},
            "demos": {"count": 8, "source": "expert"},
            "train": {"updates_per_step": 1.0, "learning_starts": 20, "online_capacity": 5000, "demo_capacity": 2000},
            "checkpoint": {"every_transitions": 100}, "eval": {"episodes": 4}, "log": {"progress": False}}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return data


LATENT_SHAPE = (36, 64)  # TINY_VLA's (cameras * num_query_tokens + max_text_tokens, hidden)


def small_sac_config():
    """The SACConfig a session on the tiny checkpoint builds (same value -> same compiled update, in-process too)."""
    from policy.config import HeadConfig
    from rl_agent.config import SACConfig
    return SACConfig.from_head_config(HeadConfig(**TINY_VLA["head"]), **SMALL_SAC)


def _enable_compilation_cache() -> None:
    # What the session / actor / learner entry points do: compiled SAC functions are reused across test runs.
    from rl_agent.jobs.session import enable_compilation_cache
    enable_compilation_cache()


_enable_compilation_cache()


class NodeProcess:
    """`python -m <module> <args>` with its output in a log file (a node of the RL graph, started by a test).
    `kill(sig)` signals it and waits; it never outlives the test (SIGKILL after 15 s)."""

    def __init__(self, args, log):
        import os
        import subprocess
        import sys
        self.log_path = Path(log)
        self._f = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
        self.p = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=self._f,
                                  stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig=None, timeout: float = 15.0) -> None:
        import signal
        import subprocess
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL if sig is None else sig)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=15)
        if not self._f.closed:
            self._f.close()
