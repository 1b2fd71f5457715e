"""Teleoperation and expert-data recording for irevla (pure cores; thin ROS nodes on top: teleop_node, recorder_node).

- `teleop.devices`     SpaceMouse / keyboard devices: `read()` is the only hardware access.
- `teleop.mapping`     pure mapping of device samples to the 7-D action contract (SERL's SpaceMouse mapping).
- `teleop.controller`  `TeleopConfig` (YAML) and `Teleop` = device + mapper.
- `teleop.operator`    the operator's terminal: task/instruction prompt, progress line, one control tick.
- `teleop.recorder`    `EpisodeRecorder`: one crash-safe MCAP file per episode, JSONL index, progress.
- `teleop.episode_format`, `teleop.storage`  the file format and the crash-safe directory layout.
- `teleop.dataset`     read / validate / stats / video / `EpisodeDataset` (cached loader); CLI `irevla dataset`.
See teleop/README.md.
"""
