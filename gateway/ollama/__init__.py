"""Ollama's native API (``/api/*``), so the tools that speak only Ollama find Hearth."""
