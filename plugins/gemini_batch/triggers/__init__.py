"""The deferred wait on a batch job: polls through the hook's async client, serializes nothing secret."""

# The public name, where a trigger deferred before the modules moved is stored (by its class path).
from gemini_batch.triggers.gemini import GeminiBatchJobTrigger

__all__ = ["GeminiBatchJobTrigger"]
