"""`irevla join`: a second terminal's way into a running graph (`irevla launch ...` in the first one).

    irevla join                              # list the running graphs and how to join them
    irevla join -- ros2 topic list           # run a command in the only running graph's namespace and domain
    irevla join rl_session -- ros2 service call /irevla/rl/mark_success std_srvs/srv/Trigger

The twin graphs run in a private network namespace with a domain id of their own; a real cell's graph runs on the
host network, and joining it only sets its domain id.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    head = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="irevla join", description=__doc__.split("\n\n")[0],
                                 epilog="usage with a command: irevla join [GRAPH] -- CMD [ARGS...]")
    ap.add_argument("graph", nargs="?", default=None, help="graph name or launcher pid (default: the only one)")
    args = ap.parse_args(head)
    from robot_server.isolation import JoinError, join_graph, join_hint, pick_graph, running_graphs
    if not cmd:
        graphs = running_graphs()
        for g in graphs:
            print(join_hint(g))
        if not graphs:
            print("no running graph (start one with `irevla launch GRAPH`)")
        return 0
    try:
        record = pick_graph(args.graph)
        if record is None:
            raise JoinError("no running graph to join (start one with `irevla launch GRAPH`)")
        exe = shutil.which(cmd[0]) or cmd[0]
        join_graph(record, [exe, *cmd[1:]])  # re-executes into the namespace when it differs from ours
    except JoinError as e:
        print(f"irevla join: error: {e}", file=sys.stderr)
        return 2
    os.execvpe(exe, [exe, *cmd[1:]], dict(os.environ))  # same namespace already: the domain alone was set
    return 0  # not reached
