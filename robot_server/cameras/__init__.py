"""Camera sources for camera_node: the twin's renderer now, real cameras later."""
