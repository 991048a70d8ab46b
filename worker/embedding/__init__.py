"""Embedding models: a BERT encoder in MLX, sentence-transformers pooling, and the worker core
that batches inputs (``kind = "embedding"`` model entries)."""
