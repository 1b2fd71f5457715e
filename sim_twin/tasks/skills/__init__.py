"""Skill name -> skill object. A new skill is a module here plus a line below; tasks using it are pure YAML."""
from sim_twin.tasks.skill import Skill
from sim_twin.tasks.skills.pick import PickSkill

SKILLS: dict[str, Skill] = {s.name: s for s in [PickSkill()]}
