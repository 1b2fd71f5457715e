"""MuJoCo twin of the iRe-VLA real-world cell (Panda + parallel gripper, table, front and wrist cameras)."""
