"""Test helpers that later stages reuse: a real local OpenAI-compatible replay and fault server."""
