"""teeflow.attestation."""
