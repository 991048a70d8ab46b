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


def system_prefix(tokenizer: Any, inp: dict[str, Any], tokens: list[int]) -> int:
    """How many leading ``tokens`` are the system prompt (0 when there is none or it can't be
    told): the prompt cache keeps that part as an entry of its own. Found as mlx-lm's server
    does, by rendering the system messages before an empty user turn and comparing."""
    messages = inp.get("messages")
    if not isinstance(messages, list) or not tokenizer.has_chat_template:
        return 0
    n = 0
    while n < len(messages) and isinstance(messages[n], dict) and messages[n].get("role") in ("system", "developer"):
        n += 1
    if n == 0 or n == len(messages):
        return 0
    try:
        head = tokenizer.apply_chat_template(
            messages[:n] + [{"role": "user", "content": ""}], add_generation_prompt=False
        )
    except Exception:  # a template that can't render this cut: no system entry, nothing else lost
        return 0
    common = 0
    for a, b in zip(head, tokens):
        if a != b:
            break
        common += 1
    return common if 0 < common < len(tokens) else 0
