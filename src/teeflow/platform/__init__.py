"""teeflow.platform."""
