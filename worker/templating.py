"""Turning a request's input into prompt tokens.

The model's own chat template (from tokenizer_config.json) renders chat messages; a model
without one gets a plain "role: content" transcript so it still answers rather than failing.
"""

from __future__ import annotations

from typing import Any


class TemplateError(ValueError):
    """The input can't be rendered for this model (a client error, not a worker bug)."""


def prompt_tokens(tokenizer: Any, inp: dict[str, Any]) -> list[int]:
    """Tokens for ``messages`` (chat), ``prompt`` (plain text) or ready ``tokens``."""
    if "tokens" in inp:
        return [int(t) for t in inp["tokens"]]
    if "prompt" in inp:
        return list(tokenizer.encode(str(inp["prompt"])))
    messages = inp.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TemplateError("input needs messages, prompt or tokens")
    if tokenizer.has_chat_template:
        try:
            return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        except Exception as e:  # jinja raises arbitrary errors for inputs a template refuses
            raise TemplateError(f"the model's chat template refused the messages: {e}") from e
    text = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages) + "assistant: "
    return list(tokenizer.encode(text))
