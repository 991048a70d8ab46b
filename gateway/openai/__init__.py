"""The OpenAI-compatible API: schemas (validation), translate (to and from the wire), endpoints."""
