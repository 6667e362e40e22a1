"""teeflow.hazmat."""
