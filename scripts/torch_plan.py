#!/usr/bin/env python3
"""Which torch scripts/setup.sh installs: the one decision, kept apart so that it can be tested without installing.

    python scripts/torch_plan.py [--cuda TAG] [--index URL]          # probes the torch of this interpreter
    IREVLA_TORCH_PROBE="2.13.0+cu128 12.8" python scripts/torch_plan.py   # pretend (tests): "VERSION CUDA" | none

Prints `key=value` lines that setup.sh reads:
    action   cpu           today's path: pip install torch==2.13.0+cpu -c requirements/constraints.txt
             keep          a GPU build of torch is installed: keep it; everything else is installed with the
                           constraints minus their torch pin, plus a pin to the installed version
             install-cuda  asked for (--cuda TAG): torch==2.13.0+TAG from the PyTorch index for TAG
    spec     the requirement pip installs (empty for keep)
    index    the extra index it comes from (install-cuda only)
    version  the torch version the venv must end with (setup.sh checks it, and its stamp records it)
    note     one line for the log
Rules: an explicit --cuda TAG installs that CUDA build (unless exactly it is already there); otherwise a torch whose
build reports CUDA (or ROCm) is kept whatever its version, never replaced by the CPU wheel; otherwise (no torch, or
the CPU build) the CPU pin, exactly as before. Standard library only: it runs on any interpreter, before or after
the venv exists, and never imports torch (a broken CUDA install cannot stop it).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Optional

TORCH_VERSION = "2.13.0"  # the version requirements/constraints.txt was resolved against
CPU_PIN = f"torch=={TORCH_VERSION}+cpu"
DEFAULT_INDEX = "https://download.pytorch.org/whl/{tag}"
_TAG = re.compile(r"^(cu\d{2,3}|rocm\d+(\.\d+)*)$")


def probe() -> tuple[Optional[str], Optional[str]]:
    """(version, cuda) of the torch this interpreter would import, without importing it: the distribution's version
    and the `cuda` (else `hip`) string of torch/version.py. (None, None) without torch."""
    fake = os.environ.get("IREVLA_TORCH_PROBE")
    if fake is not None:
        parts = fake.split()
        if not parts or parts[0] == "none":
            return None, None
        return parts[0], (parts[1] if len(parts) > 1 and parts[1] != "none" else None)
    try:
        version = importlib.metadata.version("torch")
        spec = importlib.util.find_spec("torch")
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None, None
    if spec is None or not spec.submodule_search_locations:
        return None, None
    gpu = None
    vfile = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    if vfile.is_file():
        text = vfile.read_text(encoding="utf-8", errors="replace")
        for key in ("cuda", "hip"):
            m = re.search(rf"^{key}\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
            if m:
                gpu = m.group(1) if key == "cuda" else f"rocm {m.group(1)}"
                break
    return version, gpu


def plan(installed: Optional[str], installed_cuda: Optional[str], cuda_tag: Optional[str] = None,
         index: Optional[str] = None) -> dict:
    """The decision for an installed torch (`installed` version or None, its CUDA string or None) and the request
    (`cuda_tag` like "cu128", None: no request)."""
    if cuda_tag:
        if not _TAG.match(cuda_tag):
            raise ValueError(f"--cuda {cuda_tag!r}: expected a PyTorch wheel tag such as cu126, cu128, cu130")
        want = f"{TORCH_VERSION}+{cuda_tag}"
        url = index or DEFAULT_INDEX.format(tag=cuda_tag)
        if installed == want:
            return {"action": "keep", "spec": "", "index": "", "version": want,
                    "note": f"torch {want} (asked for) is already installed: kept"}
        was = f"replacing torch {installed}" if installed else "no torch yet"
        return {"action": "install-cuda", "spec": f"torch=={want}", "index": url, "version": want,
                "note": f"installing torch {want} from {url} (asked for with --cuda {cuda_tag}; {was})"}
    if installed and installed_cuda:
        note = f"torch {installed} (GPU build, CUDA {installed_cuda}) is installed: kept, never replaced by the CPU " \
               "build"
        if installed.split("+")[0] != TORCH_VERSION:
            note += f"; the pinned stack was resolved against torch {TORCH_VERSION}, this one is {installed}"
        return {"action": "keep", "spec": "", "index": "", "version": installed, "note": note}
    was = f"torch {installed} is the CPU build" if installed else "no torch yet"
    return {"action": "cpu", "spec": CPU_PIN, "index": "", "version": f"{TORCH_VERSION}+cpu",
            "note": f"{was}: the CPU build ({CPU_PIN}); a GPU workstation: bash scripts/setup.sh --cuda cu128"}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda", default=os.environ.get("IREVLA_TORCH_CUDA") or None, metavar="TAG",
                    help="install torch 2.13.0+TAG (cu126, cu128, ...) from the PyTorch index (env IREVLA_TORCH_CUDA)")
    ap.add_argument("--index", default=os.environ.get("IREVLA_TORCH_INDEX") or None, metavar="URL",
                    help="the index that serves it (default https://download.pytorch.org/whl/TAG; env "
                         "IREVLA_TORCH_INDEX)")
    args = ap.parse_args(argv)
    version, cuda = probe()
    try:
        p = plan(version, cuda, args.cuda, args.index)
    except ValueError as exc:
        print(f"torch_plan: {exc}", file=sys.stderr)
        return 2
    for k in ("action", "spec", "index", "version", "note"):
        print(f"{k}={p[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
