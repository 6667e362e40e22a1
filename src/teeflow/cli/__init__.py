"""teeflow.cli."""
