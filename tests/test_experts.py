"""Every task's scripted expert solves its task through the robot server's safety layer (the Gymnasium env).

CI runs 10 seeded episodes per task; `irevla experts --episodes 100` is the full measurement (>= 90 % per task).
"""
import os

from robot_server.experts_cli import main as experts_main


def test_every_scripted_expert_succeeds(capsys):
    episodes = int(os.environ.get("IREVLA_EXPERT_EPISODES", "10"))
    rc = experts_main(["--episodes", str(episodes), "--seed0", "1000", "--workers", "2", "--min-success", "0.9"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    assert out.count("/") >= 20  # a line per task: the whole suite ran
