"""teeflow.attestation.sgx."""
