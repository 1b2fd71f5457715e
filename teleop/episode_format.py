"""The episode file format: one MCAP file per episode with ROS 2 messages (CDR), written with rosbags.

Topics (one message of each per control step, all stamped with the step time; MCAP log time == header stamp):

    /irevla/camera/<name>/image_raw             sensor_msgs/msg/Image rgb8   (camera format "raw", default)
    /irevla/camera/<name>/image_raw/compressed  sensor_msgs/msg/CompressedImage  (camera format "jpeg"/"png")
    /irevla/robot/joint_states                  sensor_msgs/msg/JointState  (arm joints: position, velocity)
    /irevla/robot/ee_pose                       geometry_msgs/msg/PoseStamped (TCP in the base frame)
    /irevla/robot/gripper                       sensor_msgs/msg/JointState  name ["gripper_width"], metres
    /irevla/episode/action                      std_msgs/msg/Float64MultiArray  the executed 7-D contract action
    /irevla/episode/instruction                 std_msgs/msg/String

Episode metadata lives in the MCAP metadata record that rosbag2 defines ("rosbag2" -> serialized_metadata ->
custom_data): key ``irevla.episode`` holds the whole metadata as JSON (a few flat keys repeat the main fields for
`ros2 bag info`). The same metadata is the episode's line in ``index.jsonl``.

Training views an episode step as (images {camera: HxWx3 uint8 RGB}, state (15,), action (7,), instruction) with
state = [q (n joints), ee_x, ee_y, ee_z, ee_qw, ee_qx, ee_qy, ee_qz, gripper_width] (STATE_TAIL).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from robot_server.contract import POLICY_STATE_NAMES

FORMAT = "irevla-episode/1"
METADATA_KEY = "irevla.episode"
TOPIC_JOINTS = "/irevla/robot/joint_states"
TOPIC_EE_POSE = "/irevla/robot/ee_pose"
TOPIC_GRIPPER = "/irevla/robot/gripper"
TOPIC_ACTION = "/irevla/episode/action"
TOPIC_INSTRUCTION = "/irevla/episode/instruction"
T_IMAGE = "sensor_msgs/msg/Image"
T_COMPRESSED = "sensor_msgs/msg/CompressedImage"
T_JOINTS = "sensor_msgs/msg/JointState"
T_POSE = "geometry_msgs/msg/PoseStamped"
T_ARRAY = "std_msgs/msg/Float64MultiArray"
T_STRING = "std_msgs/msg/String"
ACTION_NAMES = ("dx", "dy", "dz", "rx", "ry", "rz", "gripper")
STATE_TAIL = POLICY_STATE_NAMES  # the policy's state (robot_server.contract), so a recorded episode feeds it as is
DEFAULT_JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8))
IMAGE_FORMATS = ("raw", "jpeg", "png")
DISTROS = ("kilted", "humble", "jazzy")


@dataclass(frozen=True)
class CameraConfig:
    name: str
    width: int = 224
    height: int = 224
    # raw: sensor_msgs/Image rgb8 (lossless; MCAP zstd chunk compression applies). jpeg/png:
    # sensor_msgs/CompressedImage (see docs in teleop/README.md for the measured sizes).
    format: str = "raw"
    jpeg_quality: int = 95
    frame_id: str = ""  # default "<name>_camera_optical_frame" (as robot_server's camera node)

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(f"camera name must be non-empty [A-Za-z0-9_], got {self.name!r}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name}: width/height must be positive, got {self.width}x{self.height}")
        if self.format not in IMAGE_FORMATS:
            raise ValueError(f"camera {self.name}: format must be one of {IMAGE_FORMATS}, got {self.format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"camera {self.name}: jpeg_quality must be 1..100, got {self.jpeg_quality}")

    @property
    def topic(self) -> str:
        return image_topic(self.name, self.format)

    @property
    def msgtype(self) -> str:
        return T_IMAGE if self.format == "raw" else T_COMPRESSED

    @property
    def optical_frame(self) -> str:
        return self.frame_id or f"{self.name}_camera_optical_frame"


def image_topic(name: str, fmt: str = "raw") -> str:
    base = f"/irevla/camera/{name}/image_raw"
    return base if fmt == "raw" else base + "/compressed"


DEFAULT_CAMERAS = (CameraConfig("front"), CameraConfig("wrist"))


def topics_for(cameras: Iterable[CameraConfig]) -> dict[str, str]:
    """topic -> msgtype, cameras first, in file order."""
    out = {c.topic: c.msgtype for c in cameras}
    out.update({TOPIC_JOINTS: T_JOINTS, TOPIC_EE_POSE: T_POSE, TOPIC_GRIPPER: T_JOINTS, TOPIC_ACTION: T_ARRAY,
                TOPIC_INSTRUCTION: T_STRING})
    return out


@functools.lru_cache(maxsize=None)
def typestore(distro: str = "kilted"):
    from rosbags.typesys import Stores, get_typestore
    stores = {"kilted": Stores.ROS2_KILTED, "humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise ValueError(f"ROS distro for message definitions must be one of {sorted(stores)}, got {distro!r}")
    return get_typestore(stores[distro])


def state_names(joint_names: Iterable[str]) -> list[str]:
    return list(joint_names) + list(STATE_TAIL)


# ---------------------------------------------------------------------------------------------- step data
@dataclass
class StepState:
    """The robot part of one step, as numpy (validated by the recorder)."""
    joint_names: tuple[str, ...]
    q: np.ndarray
    dq: np.ndarray  # may be empty
    effort: np.ndarray  # may be empty
    ee_pos: np.ndarray  # (3,)
    ee_quat: np.ndarray  # (4,) wxyz
    gripper_width: float

    def vector(self) -> np.ndarray:
        return np.concatenate([self.q, self.ee_pos, self.ee_quat, [self.gripper_width]]).astype(np.float64)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def coerce_state(state: Any, default_joint_names: tuple[str, ...], n_joints: int) -> StepState:
    """A RobotState / TwinState / mapping with q, ee_pos, ee_quat (wxyz), gripper_width (dq, effort, joint_names
    optional) -> StepState. Raises ValueError naming the first bad field (shape, type or NaN/inf)."""
    if state is None:
        raise ValueError("robot state is missing (None)")
    problems = []

    def arr(name: str, shape: Optional[tuple], required: bool = True) -> np.ndarray:
        v = _field(state, name)
        if v is None:
            if required:
                problems.append(f"state.{name} is missing")
            return np.zeros(0)
        try:
            a = np.asarray(v, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            problems.append(f"state.{name} is not numeric: {v!r}")
            return np.zeros(0)
        if shape is not None and a.shape != shape:
            problems.append(f"state.{name} has {a.size} values, expected {shape[0]}")
        elif not np.all(np.isfinite(a)):
            bad = [i for i in range(a.size) if not math.isfinite(a[i])]
            problems.append(f"state.{name} contains NaN/inf at index {bad}")
        return a

    q = arr("q", (n_joints,))
    dq = arr("dq", None, required=False)
    if dq.size not in (0, n_joints) and not any("state.dq" in p for p in problems):
        problems.append(f"state.dq has {dq.size} values, expected {n_joints} (or none)")
    effort = arr("effort", None, required=False)
    if effort.size not in (0, n_joints) and not any("state.effort" in p for p in problems):
        problems.append(f"state.effort has {effort.size} values, expected {n_joints} (or none)")
    ee_pos = arr("ee_pos", (3,))
    ee_quat = arr("ee_quat", (4,))
    if ee_quat.shape == (4,) and np.all(np.isfinite(ee_quat)) and not 0.5 < np.linalg.norm(ee_quat) < 1.5:
        problems.append(f"state.ee_quat {ee_quat.tolist()} is not a unit quaternion (wxyz)")
    gw = arr("gripper_width", (1,))
    if problems:
        raise ValueError("; ".join(problems))
    names = _field(state, "joint_names") or default_joint_names
    names = tuple(str(n) for n in names)
    if len(names) != n_joints:
        raise ValueError(f"state.joint_names has {len(names)} names, expected {n_joints}")
    return StepState(names, q, dq, effort, ee_pos, ee_quat, float(gw[0]))


# ---------------------------------------------------------------------------------------------- messages
def _stamp(ts, stamp_ns: int):
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def _header(ts, stamp_ns: int, frame_id: str):
    return ts.types["std_msgs/msg/Header"](stamp=_stamp(ts, stamp_ns), frame_id=frame_id)


def encode_image(ts, cam: CameraConfig, image: np.ndarray, stamp_ns: int) -> Any:
    """HxWx3 uint8 RGB -> an Image (raw) or CompressedImage (jpeg/png) message object of typestore `ts`."""
    header = _header(ts, stamp_ns, cam.optical_frame)
    if cam.format == "raw":
        return ts.types[T_IMAGE](header=header, height=image.shape[0], width=image.shape[1], encoding="rgb8",
                                 is_bigendian=0, step=image.shape[1] * 3, data=image.reshape(-1))
    import cv2
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if cam.format == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"camera {cam.name}: {cam.format} encoding failed")
    return ts.types[T_COMPRESSED](header=header, format="rgb8; jpeg compressed bgr8" if cam.format == "jpeg"
                                  else "rgb8; png compressed bgr8", data=buf.reshape(-1))


def robot_messages(ts, state: StepState, stamp_ns: int, base_frame: str) -> dict[str, Any]:
    JointState = ts.types[T_JOINTS]
    P = ts.types["geometry_msgs/msg/Point"]
    Q = ts.types["geometry_msgs/msg/Quaternion"]
    w, x, y, z = (float(v) for v in state.ee_quat)
    return {
        TOPIC_JOINTS: JointState(header=_header(ts, stamp_ns, ""), name=list(state.joint_names),
                                 position=state.q, velocity=state.dq, effort=state.effort),
        TOPIC_EE_POSE: ts.types[T_POSE](
            header=_header(ts, stamp_ns, base_frame),
            pose=ts.types["geometry_msgs/msg/Pose"](position=P(x=float(state.ee_pos[0]), y=float(state.ee_pos[1]),
                                                               z=float(state.ee_pos[2])),
                                                    orientation=Q(x=x, y=y, z=z, w=w))),
        TOPIC_GRIPPER: JointState(header=_header(ts, stamp_ns, ""), name=["gripper_width"],
                                  position=np.array([state.gripper_width]), velocity=np.zeros(0),
                                  effort=np.zeros(0)),
    }


def action_message(ts, action: np.ndarray) -> Any:
    Dim = ts.types["std_msgs/msg/MultiArrayDimension"]
    Layout = ts.types["std_msgs/msg/MultiArrayLayout"]
    return ts.types[T_ARRAY](layout=Layout(dim=[Dim(label="action", size=len(action), stride=len(action))],
                                           data_offset=0),
                             data=np.asarray(action, dtype=np.float64))


def string_message(ts, text: str) -> Any:
    return ts.types[T_STRING](data=text)


# ---------------------------------------------------------------------------------------------- decoding
def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """Image (rgb8/bgr8) or CompressedImage message (any decoder's object) -> HxWx3 uint8 RGB."""
    if msgtype.endswith("CompressedImage"):
        import cv2
        buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data, np.uint8)
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"CompressedImage ({msg.format}) does not decode")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (expected rgb8)")
    data = msg.data if isinstance(msg.data, np.ndarray) else np.frombuffer(bytes(msg.data), np.uint8)
    if step < w * 3 or data.size != h * step:
        raise ValueError(f"image data has {data.size} bytes, expected height*step = {h}*{step}")
    img = data.reshape(h, step)[:, : w * 3].reshape(h, w, 3)
    return img[..., ::-1] if msg.encoding == "bgr8" else img


def stamp_ns_of(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def metadata_to_custom_data(meta: dict) -> dict[str, str]:
    """rosbag2 custom_data (string -> string): the JSON, plus flat copies of the main fields for `ros2 bag info`."""
    out = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
    for k in ("task", "category", "instruction", "operator", "success", "n_steps"):
        if k in meta:
            v = meta[k]
            out[f"irevla.{k}"] = json.dumps(v) if isinstance(v, bool) else str(v)
    return out
