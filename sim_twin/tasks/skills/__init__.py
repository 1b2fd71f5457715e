"""Skill name -> skill object. A new skill is a module here plus a line below; tasks using it are pure YAML."""
from sim_twin.tasks.skill import Skill
from sim_twin.tasks.skills.pick import PickSkill
from sim_twin.tasks.skills.place import PlaceSkill
from sim_twin.tasks.skills.button_press import ButtonPressSkill
from sim_twin.tasks.skills.drawer_open import DrawerOpenSkill

SKILLS: dict[str, Skill] = {s.name: s for s in [PickSkill()]}
SKILLS.update({s.name: s for s in [PlaceSkill(), ButtonPressSkill(), DrawerOpenSkill()]})
from sim_twin.tasks.skills.cable_route import CableRouteSkill  # noqa: E402
SKILLS[CableRouteSkill.name] = CableRouteSkill()
from sim_twin.tasks.skills.reach import ReachSkill  # noqa: E402
SKILLS[ReachSkill.name] = ReachSkill()
from sim_twin.tasks.skills.metaworld import MetaWorldSkill  # noqa: E402
SKILLS[MetaWorldSkill.name] = MetaWorldSkill()
