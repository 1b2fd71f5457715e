"""The MuJoCo twin of the cell: one task scene, an end-effector impedance controller at physics rate, cameras."""
from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from sim_twin.controller import ControllerConfig, OperationalSpaceController
from sim_twin.fixtures import CELL_FIXTURES, FIXTURES
from sim_twin.geometry import mat_to_quat, yaw_quat
from sim_twin.scene import FIXTURE_PREFIX, OBJECT_PREFIX, ROBOT_PREFIX, SceneSpec, build_model
from sim_twin.tasks.registry import TaskRegistry, TaskSpec

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
# Home: TCP 0.45 m in front of the base, 0.25 m above the table, gripper pointing down.
HOME_POS = np.array([0.45, 0.0, 0.25])
HOME_QUAT = np.array([0.0, 1.0, 0.0, 0.0])  # rotation of pi about x: gripper z axis points down
_SEED_Q = np.array([0.0, 0.2, 0.0, -2.3, 0.0, 2.5, np.pi / 4])
GRIPPER_OPEN_CTRL, GRIPPER_CLOSED_CTRL = 0.0, 255.0


@dataclass(frozen=True)
class TwinConfig:
    render_width: int = 224
    render_height: int = 224
    cameras: tuple[str, ...] = ("front", "wrist")
    physics_dt: float = 0.002
    # "fast" draws the robot's collision meshes (about 2x faster on a CPU renderer, still a recognisable arm);
    # "full" draws the detailed visual meshes.
    render_detail: str = "fast"
    task_files: tuple[str, ...] = ()
    # Training-only clutter objects (the registry's `clutter` pool) drawn into each scene that has objects; 0 in
    # every evaluation. The draw comes from the episode seed, so object labels can replay it.
    clutter: int = 0
    controller: ControllerConfig = field(default_factory=ControllerConfig)


@dataclass
class TwinState:
    time: float
    q: np.ndarray
    dq: np.ndarray
    ee_pos: np.ndarray
    ee_quat: np.ndarray  # wxyz, base frame
    ee_vel: np.ndarray  # linear (3) + angular (3), base frame
    gripper_width: float  # metres between the pads
    gripper_command: float  # 0 open .. 1 closed
    joint_names: tuple[str, ...] = ARM_JOINTS


CAMERA_NAMES = {"front": "front", "wrist": ROBOT_PREFIX + "handcam_rgb"}


class Twin:
    """Owns one MjModel/MjData for the current task. Not thread-safe: callers serialize access."""

    def __init__(self, config: TwinConfig = TwinConfig(), registry: TaskRegistry | None = None):
        self.config = config
        self.registry = registry or TaskRegistry.load(config.task_files)
        self.home_pos, self.home_quat = HOME_POS.copy(), HOME_QUAT.copy()
        self.task: TaskSpec | None = None
        self.instruction: str = ""
        self.episode_seed: int | None = None
        self._models: dict[str, mujoco.MjModel] = {}
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._home_q: np.ndarray | None = None
        if config.render_detail not in ("fast", "full"):
            raise ValueError(f"render_detail must be 'fast' or 'full', got {config.render_detail!r}")
        self._scene_option = mujoco.MjvOption()
        if config.render_detail == "fast":  # robot visual meshes are group 2, collision meshes group 3
            self._scene_option.geomgroup[2] = 0
            self._scene_option.geomgroup[3] = 1
        self._load(None)

    # ---------------------------------------------------------------- model management
    def _scene_key(self, task: TaskSpec | None) -> str:
        return "__empty__" if task is None else task.name + ("+clutter" if self._clutter_pool(task) else "")

    def _clutter_pool(self, task: TaskSpec | None) -> tuple[str, ...]:
        if task is None or self.config.clutter <= 0 or not (task.objects or task.distractors):
            return ()
        return tuple(o for o in self.registry.clutter if o not in task.objects + task.distractors)

    def _load(self, task: TaskSpec | None) -> None:
        key = self._scene_key(task)
        if key not in self._models:
            from sim_twin.tasks.skills import SKILLS
            fixtures = list(CELL_FIXTURES)
            objects = []
            if task is not None:
                fixtures += [f for f in SKILLS[task.skill].fixtures if f not in fixtures]
                names = dict.fromkeys(task.objects + task.distractors + self._clutter_pool(task))
                objects = [self.registry.objects[n] for n in names]
            scene = SceneSpec(objects=objects, fixtures=[FIXTURES[f] for f in fixtures],
                              render_width=self.config.render_width, render_height=self.config.render_height,
                              physics_dt=self.config.physics_dt)
            self._models[key] = build_model(scene)
        self.model = self._models[key]
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._arm_qadr = np.array([m.jnt_qposadr[m.joint(ROBOT_PREFIX + j).id] for j in ARM_JOINTS])
        self._arm_dofs = np.array([m.jnt_dofadr[m.joint(ROBOT_PREFIX + j).id] for j in ARM_JOINTS])
        self._arm_act = np.array([m.actuator(f"{ROBOT_PREFIX}actuator{i}").id for i in range(1, 8)])
        self._grip_act = m.actuator(ROBOT_PREFIX + "fingers_actuator").id
        self._tcp = m.site(ROBOT_PREFIX + "pinch").id
        self._pads = (m.body(ROBOT_PREFIX + "left_pad").id, m.body(ROBOT_PREFIX + "right_pad").id)
        self.controller = OperationalSpaceController(m, self._tcp, self._arm_dofs, self._arm_qadr, self._arm_act, _SEED_Q,
                                                     self.config.controller)
        self._renderers.clear()

    # ---------------------------------------------------------------- episode
    def reset(self, task: str | TaskSpec | None = None, seed: int | None = None) -> TwinState:
        from sim_twin.tasks.skills import SKILLS
        if task is not None:
            spec = task if isinstance(task, TaskSpec) else self.registry.get(task)
            if self.task is None or spec.name != self.task.name or self._scene_key(spec) not in self._models:
                self._load(spec)
            self.task = spec
        elif self.task is None:
            self._load(None)
        self.episode_seed = seed
        self.clutter_objects: tuple[str, ...] = ()
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qadr] = self._home_joint_config()
        self.controller.q_posture = self.data.qpos[self._arm_qadr].copy()
        mujoco.mj_forward(self.model, self.data)
        if self.task is not None:
            SKILLS[self.task.skill].randomize(self, self.task, rng)
            self._place_clutter(seed)
            # Fixture poses may have changed in the model: no warm start from the previous episode's solution,
            # so a seed gives the same episode whatever ran before.
            self.data.qacc_warmstart[:] = 0.0
            phrasings = self.task.phrasings(self.registry)
            self.instruction = phrasings[int(rng.integers(len(phrasings)))]
        mujoco.mj_forward(self.model, self.data)
        self.set_target(self.home_pos, self.home_quat, 0.0)
        self.advance(0.1)  # let contacts settle
        return self.state()

    def _place_clutter(self, seed: int | None) -> None:
        """Draw `config.clutter` pool objects onto free table spots (own stream: the task's scene is unchanged) and
        park the rest far out of every camera's view."""
        from sim_twin.tasks.skill import place_clutter
        pool = self._clutter_pool(self.task)
        if not pool:
            return
        mujoco.mj_forward(self.model, self.data)  # object_pos reads the task objects' new poses
        rng = np.random.default_rng(None if seed is None else [seed, 0xC1077E])
        chosen = [pool[i] for i in rng.permutation(len(pool))[:self.config.clutter]]
        placed = place_clutter(self, chosen, list(self.task.objects + self.task.distractors), rng)
        self.clutter_objects = tuple(placed)
        for i, name in enumerate(o for o in pool if o not in placed):
            self.set_object_pose(name, np.array([-4.0, -1.5 + 0.15 * i, -0.75 + self.registry.objects[name].rest_height]))

    def _home_joint_config(self) -> np.ndarray:
        """Joint configuration with the TCP at the home pose, found once by running the controller."""
        if self._home_q is None:
            d = mujoco.MjData(self.model)
            d.qpos[self._arm_qadr] = _SEED_Q
            mujoco.mj_forward(self.model, d)
            for _ in range(1500):
                d.ctrl[self._arm_act] = self.controller.torques(d, self.home_pos, self.home_quat)
                mujoco.mj_step(self.model, d)
            self._home_q = d.qpos[self._arm_qadr].copy()
        return self._home_q.copy()

    # ---------------------------------------------------------------- control
    def set_target(self, pos: np.ndarray, quat: np.ndarray, gripper: float) -> None:
        self._target_pos = np.asarray(pos, float).copy()
        q = np.asarray(quat, float)
        self._target_quat = q / np.linalg.norm(q)
        self._gripper_cmd = float(np.clip(gripper, 0.0, 1.0))

    @property
    def target(self) -> tuple[np.ndarray, np.ndarray, float]:
        return self._target_pos.copy(), self._target_quat.copy(), self._gripper_cmd

    def advance(self, seconds: float) -> None:
        n = max(1, int(round(seconds / self.model.opt.timestep)))
        ctrl = self.data.ctrl
        ctrl[self._grip_act] = GRIPPER_OPEN_CTRL + self._gripper_cmd * (GRIPPER_CLOSED_CTRL - GRIPPER_OPEN_CTRL)
        for _ in range(n):
            ctrl[self._arm_act] = self.controller.torques(self.data, self._target_pos, self._target_quat)
            mujoco.mj_step(self.model, self.data)

    # ---------------------------------------------------------------- observation
    def state(self) -> TwinState:
        d = self.data
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(self.model, d, mujoco.mjtObj.mjOBJ_SITE, self._tcp, vel, 0)
        left, right = (d.xpos[i] for i in self._pads)
        return TwinState(time=float(d.time), q=d.qpos[self._arm_qadr].copy(), dq=d.qvel[self._arm_dofs].copy(),
                         ee_pos=d.site_xpos[self._tcp].copy(), ee_quat=mat_to_quat(d.site_xmat[self._tcp]),
                         ee_vel=np.r_[vel[3:], vel[:3]], gripper_width=float(np.linalg.norm(left - right)),
                         gripper_command=self._gripper_cmd)

    def render(self, camera: str) -> np.ndarray:
        if camera not in CAMERA_NAMES:
            raise ValueError(f"unknown camera {camera!r}; the twin has {sorted(CAMERA_NAMES)}")
        key = (self.config.render_height, self.config.render_width)
        r = self._renderers.get(key)
        if r is None:
            r = self._renderers[key] = mujoco.Renderer(self.model, *key)
        r.update_scene(self.data, camera=CAMERA_NAMES[camera], scene_option=self._scene_option)
        return r.render()

    def success(self) -> bool:
        from sim_twin.tasks.skills import SKILLS
        return self.task is not None and bool(SKILLS[self.task.skill].success(self, self.task))

    # ---------------------------------------------------------------- helpers for skills
    def object_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.model.body(OBJECT_PREFIX + name).id].copy()

    def object_quat(self, name: str) -> np.ndarray:
        return self.data.xquat[self.model.body(OBJECT_PREFIX + name).id].copy()

    def set_object_pose(self, name: str, pos: np.ndarray, yaw: float = 0.0) -> None:
        j = self.model.joint(OBJECT_PREFIX + name)
        adr = self.model.jnt_qposadr[j.id]
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = yaw_quat(yaw)
        self.data.qvel[self.model.jnt_dofadr[j.id]:self.model.jnt_dofadr[j.id] + 6] = 0.0

    @property
    def tcp_site(self) -> int:
        """Id of the TCP site (the pose `state().ee_pos/ee_quat` reports)."""
        return self._tcp

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.model.body(name).id].copy()

    def body_frame(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and 3x3 rotation matrix of a body."""
        bid = self.model.body(name).id
        return self.data.xpos[bid].copy(), self.data.xmat[bid].reshape(3, 3).copy()

    def joint_value(self, name: str) -> float:
        """The position of a 1-dof (slide / hinge) joint, e.g. the button's or the drawer's."""
        return float(self.data.qpos[self.model.jnt_qposadr[self.model.joint(name).id]])

    def fixture_state(self) -> dict:
        """Bodies and 1-dof joints of the cell's fixtures (names "fixture/..."): what a scripted expert outside the
        process needs of them (sim_twin.snapshot)."""
        m = self.model
        bodies = {m.body(i).name: [self.data.xpos[i].tolist(), self.data.xmat[i].tolist()]
                  for i in range(m.nbody) if m.body(i).name.startswith(FIXTURE_PREFIX)}
        joints = {m.joint(i).name: float(self.data.qpos[m.jnt_qposadr[i]]) for i in range(m.njnt)
                  if m.joint(i).name.startswith(FIXTURE_PREFIX) and m.jnt_type[i] in (2, 3)}  # slide, hinge
        return {"bodies": bodies, "joints": joints}

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
