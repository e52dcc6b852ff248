"""What the test tiers share: running the DAG, the emulators' clients, the hook's stand-ins, the full stack."""
