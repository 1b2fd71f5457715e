"""`irevla <command> ...`: one entry point; each package contributes its commands through the entry point group
`irevla.commands` (name = module:function taking argv), so this dispatcher imports nothing above robot_server."""
from __future__ import annotations

import sys
from importlib.metadata import entry_points

GROUP = "irevla.commands"


def _commands() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: irevla <command> [options]\n\ncommands:")
        for name in sorted(cmds):
            print(f"  {name}")
        print("\n`irevla <command> --help` for a command's options.")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        print(f"irevla: unknown command {name!r}; known: {', '.join(sorted(cmds))}", file=sys.stderr)
        return 2
    return int(cmds[name].load()(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
