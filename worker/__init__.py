"""Hearth's worker: one process holding one warm model replica (imports MLX; the gateway never does)."""
