"""The Anthropic Messages API: schemas (validation), translate (to and from the wire), endpoints."""
