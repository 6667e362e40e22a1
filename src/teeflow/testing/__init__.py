"""teeflow.testing."""
