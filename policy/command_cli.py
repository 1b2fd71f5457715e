"""`irevla command "pick up the eggplant" [--timeout 30] [--task pick_eggplant]`: command the policy by language.

An action client of the policy server's ExecuteInstruction action (policy/server_node.py): sends the instruction,
shows the feedback as a progress line, prints the result. Ctrl-C cancels the goal (the server stops the arm:
one zero-motion action keeping the gripper, then the robot's watchdog holds); a second Ctrl-C quits at once.

Exit status: 0 success; 1 the command ran but did not succeed (failure or timeout); 3 no policy server answered
within --server-timeout; 4 the server refused the goal (empty/overlong instruction, wrong task, busy: the message
says which); 5 error while running (no usable camera/state stream, lost server); 130 canceled with Ctrl-C.

DDS: talks on this shell's ROS_DOMAIN_ID with discovery limited to localhost (ROS_AUTOMATIC_DISCOVERY_RANGE
defaults to LOCALHOST here); the policy server must run in the same network namespace and domain.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Optional

EXIT_SUCCESS, EXIT_NOT_ACHIEVED, EXIT_NO_SERVER, EXIT_REFUSED, EXIT_ERROR, EXIT_CANCELED = 0, 1, 3, 4, 5, 130


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="irevla command", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("instruction", help='free-form language, e.g. "pick up the red block"')
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="time budget of the command in seconds (default 0: the server's default_timeout_s)")
    ap.add_argument("--task", default="", help="registry task whose success predicate ends the command (twin); "
                                                "the server checks that the cell runs it")
    ap.add_argument("--server-timeout", type=float, default=10.0,
                    help="seconds to wait for a policy server (default 10)")
    ap.add_argument("--action", default=None, help="action name (default /irevla/policy/execute_instruction)")
    return ap


def _progress_line(fb) -> str:
    return (f"step {fb.step:4d} | {fb.elapsed_s:6.1f} s | {100.0 * fb.progress:5.1f} % of the time budget | "
            f"late actions {fb.late_actions}")


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if not (args.timeout >= 0.0) or not (args.server_timeout > 0.0):
        print("irevla command: --timeout must be >= 0 and --server-timeout > 0", file=sys.stderr)
        return 2
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    from rclpy.action import ActionClient
    from rclpy.action.client import GoalStatus
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from irevla_interfaces.action import ExecuteInstruction
    from robot_server import ros_interface as ri

    action_name = args.action or ri.ACTION_EXECUTE_INSTRUCTION
    interrupts = []
    goal_sent = [False]

    def on_sigint(*_):
        interrupts.append(time.monotonic())
        if len(interrupts) >= 2 or not goal_sent[0]:  # nothing to cancel yet, or a second Ctrl-C: quit now
            raise KeyboardInterrupt

    tty = sys.stdout.isatty()
    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    old_handler = signal.signal(signal.SIGINT, on_sigint)
    node = rclpy.create_node(f"irevla_command_{os.getpid()}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop_spin = threading.Event()

    def spin():
        while not stop_spin.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, name="irevla-command-spin", daemon=True)
    spinner.start()
    last_feedback = [0.0, None]  # time printed, last feedback
    printed_progress = [False]

    def on_feedback(msg):
        fb = msg.feedback
        last_feedback[1] = fb
        now = time.monotonic()
        if tty:
            sys.stdout.write("\r" + _progress_line(fb) + "   ")
            sys.stdout.flush()
            printed_progress[0] = True
        elif now - last_feedback[0] >= 1.0:  # a log line per second when not on a terminal
            last_feedback[0] = now
            print(_progress_line(fb), flush=True)

    def end_progress():
        if printed_progress[0]:
            sys.stdout.write("\n")
            printed_progress[0] = False

    client = None
    try:
        client = ActionClient(node, ExecuteInstruction, action_name)
        if not client.wait_for_server(timeout_sec=args.server_timeout):
            print(f"irevla command: no policy server on {action_name} within {args.server_timeout:g} s "
                  f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}); start one with "
                  "`policy_server --ros-args -p checkpoint:=DIR` or the language_commanding graph", file=sys.stderr)
            return EXIT_NO_SERVER
        goal = ExecuteInstruction.Goal(instruction=args.instruction, timeout_s=float(args.timeout), task=args.task)
        print(f"-> {args.instruction!r}" + (f" (task {args.task})" if args.task else ""), flush=True)
        goal_sent[0] = True
        send = client.send_goal_async(goal, feedback_callback=on_feedback)
        deadline = time.monotonic() + args.server_timeout
        while not send.done():
            if time.monotonic() > deadline:
                print(f"irevla command: the server did not answer the goal within {args.server_timeout:g} s",
                      file=sys.stderr)
                return EXIT_ERROR
            time.sleep(0.02)
        handle = send.result()
        if not handle.accepted:
            print("irevla command: the policy server rejected the goal", file=sys.stderr)
            return EXIT_REFUSED
        result_future = handle.get_result_async()
        cancel_sent = False
        while not result_future.done():
            if interrupts and not cancel_sent:
                end_progress()
                print("canceling (Ctrl-C again to quit at once)...", flush=True)
                handle.cancel_goal_async()
                cancel_sent = True
            if not client.server_is_ready() and not result_future.done():
                time.sleep(1.0)  # a brief discovery hiccup is not a lost server
                if not client.server_is_ready() and not result_future.done():
                    end_progress()
                    print("irevla command: lost the policy server while the command ran", file=sys.stderr)
                    return EXIT_ERROR
            time.sleep(0.02)
        end_progress()
        wrapped = result_future.result()
        res = wrapped.result
        print(f"{res.outcome}: {res.message} ({res.steps} actions, {res.elapsed_s:.1f} s)", flush=True)
        if res.outcome == "success" and wrapped.status == GoalStatus.STATUS_SUCCEEDED:
            return EXIT_SUCCESS
        if res.outcome == "canceled":
            return EXIT_CANCELED
        if res.outcome in ("failure", "timeout"):
            return EXIT_NOT_ACHIEVED
        if res.message.startswith("rejected:"):
            return EXIT_REFUSED
        return EXIT_ERROR
    except KeyboardInterrupt:
        end_progress()
        print("irevla command: interrupted (the goal may still be running on the server)", file=sys.stderr)
        return EXIT_CANCELED
    finally:
        signal.signal(signal.SIGINT, old_handler)
        stop_spin.set()
        spinner.join(timeout=2.0)
        executor.shutdown(timeout_sec=1.0)
        if client is not None:
            client.destroy()  # not done by destroy_node (action clients are waitables)
        node.destroy_node()
        context.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
