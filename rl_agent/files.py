"""Crash-safe file writes for session state (agent, buffers, classifier, summaries): a SIGKILL at any moment leaves
either the old file or the complete new one, never a torn one."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


@contextmanager
def atomic_open(path: Union[str, Path], mode: str = "wb", fsync: bool = True) -> Iterator:
    """Write to a temp file beside `path`; on success flush, fsync and rename over `path`; on error remove it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
