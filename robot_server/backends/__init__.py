"""Robot backends: everything below the safety layer. Only robot_server code calls them."""
