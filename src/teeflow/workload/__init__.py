"""teeflow.workload."""
