"""What the test tiers share: running the DAG, the emulators' clients, the hook's stand-ins, the full stack, and
the helpers of test files split between tiers (documents, plans, ledgers, pipelines, batch requests, load)."""
