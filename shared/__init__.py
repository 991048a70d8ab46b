"""Hearth's shared package: the wire protocol, its codec and the configuration both processes use.

Nothing here imports MLX, so the gateway can use all of it.
"""
