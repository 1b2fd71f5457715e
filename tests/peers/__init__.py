"""Real protocol peers for the hardware-backend tests (franky-sim, franka-sim, a franka_ros2 stand-in node).

`provision.py` creates what they need once per machine / CI run in a cache directory (their own virtual
environments, the robot bindings, the franka_msgs fixture build); the test fixtures start the peers on 127.0.0.1.
"""
