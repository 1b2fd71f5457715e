"""A user's mistake on a command line, found before any work starts.

`UsageError` is printed by the `irevla` dispatcher (robot_server/cli.py) as one line `irevla CMD: error: ...` with
exit status 2. The checks here run first in each command, so a wrong path fails in a second, not after a model load.
`add_hidden_alias` keeps an old option spelling working after a command adopts the spelling all commands share.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


class UsageError(ValueError):
    """The command line or a file it names is wrong (not a bug)."""


def require_file(path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path} does not exist" if not p.exists() else f"{what} {path} is not a file")
    return p


def require_dir(path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"{what} {path} does not exist" if not p.exists() else f"{what} {path} is not a directory")
    return p


def require_checkpoint(path) -> Path:
    """A VLA checkpoint directory (policy.model.VLA.save writes vla_config.yaml first)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if not (p / "vla_config.yaml").is_file():
        raise UsageError(f"{path} is not a VLA checkpoint (no vla_config.yaml)")
    return p


class _DeprecatedOption(argparse.Action):
    def __init__(self, option_strings, dest, canonical: str, **kwargs):
        self.canonical = canonical
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.canonical}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_hidden_alias(parser: argparse.ArgumentParser, old: str, canonical: str, *, dest: str, **kwargs) -> None:
    """`old` sets what `canonical` sets (pass its dest and type), is left out of --help, and warns once used. A
    required `canonical` must be declared optional and checked after parsing (argparse would not count `old`)."""
    parser.add_argument(old, action=_DeprecatedOption, canonical=canonical, dest=dest, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)
