"""teeflow.attestation.collateral."""
