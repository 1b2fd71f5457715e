"""MetaWorld tasks in the registry (sim_twin/tasks/metaworld.yaml): they run in the MetaWorld cell
(sim_twin/metaworld_cell.py, through robot_server/metaworld_env.py), never in the twin. The skill only checks the
YAML: `params.env` names a MetaWorld v3 environment, the variation (body, rgba, scale, shift) is well formed."""
from __future__ import annotations

import re

from sim_twin.tasks.registry import RegistryError
from sim_twin.tasks.skill import Skill

ENV_NAME = re.compile(r"^[a-z][a-z0-9-]*-v3$")


class MetaWorldSkill(Skill):
    name = "metaworld"

    def check_task(self, task) -> None:
        from sim_twin.metaworld_cell import Variation
        env = task.params.get("env")
        if not isinstance(env, str) or not ENV_NAME.match(env):
            raise RegistryError(f"task {task.name!r}: params.env must name a MetaWorld v3 environment "
                                f"(e.g. button-press-v3), got {env!r}")
        try:
            Variation.from_params(task.params).check(task.name)
        except (TypeError, ValueError) as e:
            raise RegistryError(f"task {task.name!r}: {e}") from e

    def _not_here(self, *_args, **_kwargs):
        raise RuntimeError("a MetaWorld task runs in the MetaWorld cell (robot_server.gym_env.make_env), "
                           "not in the twin")

    randomize = success = expert = _not_here
