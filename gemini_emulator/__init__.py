"""A local emulator of the Gemini Batch API (Developer API and Vertex AI).

It speaks the REST surface the stock ``google-genai`` client calls, keeps its
state under a data directory so a restart resumes running jobs, answers with a
deterministic stand-in for the model, and injects seeded faults so the
pipeline's failure handling can be tested offline.
"""
