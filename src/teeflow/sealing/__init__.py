"""teeflow.sealing."""
