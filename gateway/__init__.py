"""Hearth's gateway: HTTP API, routing and worker supervision. It never imports MLX."""
