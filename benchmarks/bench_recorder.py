#!/usr/bin/env python3
"""Recorder benchmark (2 cameras x 30 fps at 224x224 + state into the recorder core, pinned to one core).

    .venv/bin/python benchmarks/bench_recorder.py                # 600 s
    .venv/bin/python benchmarks/bench_recorder.py --seconds 5    # CI
The logic lives in teleop/bench.py (see its docstring); the last printed line is the baseline-relative ratio.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from teleop.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
