"""The service boundary: the one place that talks to Google (the hook, its uploads, its errors and retries)."""

# The public names, where users' DAGs and connections import them from.
from gemini_batch.hooks.gemini import GeminiBatchHook, GeminiGenericConnectionHook

__all__ = ["GeminiBatchHook", "GeminiGenericConnectionHook"]
