"""OpenAI's Responses API (``/v1/responses``): schemas, translation, output formatting, store."""
