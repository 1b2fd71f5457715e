"""LeRobotDataset v3.0: the layout shared by the expert set's export (teleop/lerobot_export.py, `irevla dataset
export --format lerobot`) and import (teleop/lerobot_import.py, `irevla dataset import-lerobot`).

Export writes Hugging Face LeRobot's published v3.0 layout (pyarrow + PyAV, no `lerobot` package needed)::

    OUT/meta/info.json                                   codebase_version "v3.0", fps, features, paths, totals
    OUT/meta/stats.json                                  per feature mean/std/min/max/count
    OUT/meta/tasks.parquet                               task string (the instruction) -> task_index
    OUT/meta/episodes/chunk-000/file-000.parquet         one row per episode: length, data and video locations
    OUT/data/chunk-000/file-000.parquet                  frames of many episodes, concatenated
    OUT/videos/observation.images.<cam>/chunk-000/file-000.mp4   frames of many episodes, concatenated

Per frame: ``observation.state`` = the recorded state row (names = the episode's ``state_names``: joints, ee pose
wxyz, gripper width), ``action`` = the 7-D contract action ``[dx, dy, dz, rx, ry, rz, gripper]`` (end-effector
delta + gripper), one video feature per camera, ``timestamp`` = frame_index / fps, ``task_index`` -> the
instruction. float64 by default, so actions and states travel bit-exact; images go through the video codec
(default libx264, yuv444p, crf 0: lossless in YUV, only the RGB<->YUV rounding remains, see teleop/README.md).
Episode rows also carry ``irevla/*`` columns (task name, category, success, operator, extra) that LeRobot ignores
and the import uses when present.

Import reads a v3 dataset whose action is a 7-D end-effector delta (+ gripper) and whose observation.state is
laid out as irevla's (joints + STATE_TAIL) and writes episodes through `EpisodeRecorder` (MCAP + index.jsonl,
exactly as `irevla collect`); anything else is refused with an error naming the feature.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

PathLike = Union[str, Path]

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"


def _check_pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("LeRobot export/import needs pyarrow: pip install pyarrow -c "
                           "requirements/constraints.txt") from None
    import pyarrow as pa
    import pyarrow.parquet as pq
    return pa, pq


def _codec_name(codec: str) -> str:
    return {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libaom-av1": "av1",
            "libopenh264": "h264"}.get(codec, codec)
