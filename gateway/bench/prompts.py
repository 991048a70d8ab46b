"""The benchmark's prompts: seeded, deterministic, and different for every request of a run.

Every request gets its own user turn so no server can answer one request from another's KV
cache; the same ``--seed`` gives the same prompts, run after run, on every target (so Hearth,
``mlx_lm.server`` and ``--raw`` see the same text). A prompt is picked from the seed and the
request's place in the run (scenario, level, client, request), never from a shared random
stream, so adding a scenario doesn't change the others' prompts.

Lengths are asked for in tokens but made of words: ``WORDS_PER_TOKEN`` words per token, measured
with SmolLM2's tokenizer on this vocabulary (1,514 words gave 1,857 tokens). Other tokenizers
differ; the report shows each server's exact ``prompt_tokens``.
"""

from __future__ import annotations

import random
from typing import Any

Messages = list[dict[str, Any]]
WORDS_PER_TOKEN = 0.8

_SUBJECTS = (
    "a lighthouse keeper",
    "a retired sailor",
    "a young cartographer",
    "a village baker",
    "a night watchman",
    "a travelling musician",
    "a beekeeper",
    "a clockmaker",
    "a ferry captain",
    "a botanist",
)
_EVENTS = (
    "finds a message in a bottle",
    "hears a bell ringing under the sea",
    "discovers a door that was not there yesterday",
    "receives a letter addressed to someone long gone",
    "sees a ship with no crew",
    "loses the key to the old tower",
    "meets a stranger who knows their name",
    "wakes to find the tide has not come back",
)
_TASKS = (
    "Write a short story about",
    "Describe a day in the life of",
    "Write a letter from the point of view of",
    "Tell a fable about",
    "Write the opening scene of a novel about",
)
_WORDS = (
    "harbour lighthouse tide storm ship map star rope lamp gull anchor compass island reef "
    "current lantern cliff shore sail wave keel mast deck cabin chart fog bell pier beacon "
    "coast channel signal weather evening morning quiet bright careful steady always never "
    "precise clear short simple exact calm patient honest"
).split()


def _rng(seed: int, *where: object) -> random.Random:
    return random.Random(f"{seed}/" + "/".join(map(str, where)))


def filler(rng: random.Random, words: int) -> str:
    """``words`` words of plain sentences (seven words each, then a full stop)."""
    out: list[str] = []
    while len(out) < words:
        sentence = [rng.choice(_WORDS) for _ in range(min(7, words - len(out)))]
        sentence[0] = sentence[0].capitalize()
        sentence[-1] += "."
        out += sentence
    return " ".join(out)


def words_for(tokens: int) -> int:
    return max(1, round(tokens * WORDS_PER_TOKEN))


def user_turn(seed: int, *where: object, tokens: int = 64) -> str:
    """One request's user message of about ``tokens`` tokens: a task line (~20 tokens) plus
    seeded words."""
    rng = _rng(seed, "user", *where)
    task = f"{rng.choice(_TASKS)} {rng.choice(_SUBJECTS)} who {rng.choice(_EVENTS)}."
    return f"{task} Use these words: {filler(rng, words_for(max(1, tokens - 20)))}"


def chat(seed: int, *where: object, tokens: int = 64) -> Messages:
    """A one-turn chat for the request at ``where`` (e.g. ``("concurrent", 4, client, i)``)."""
    return [{"role": "user", "content": user_turn(seed, *where, tokens=tokens)}]


def system_prompt(seed: int, tokens: int, salt: str) -> str:
    """A long shared system prompt of about ``tokens`` tokens. ``salt`` goes first, so a run's
    prompt shares no leading tokens with any earlier run's (a prefix cache would match them)."""
    rules = filler(_rng(seed, "system"), words_for(tokens))
    return f"Session {salt}. You are a careful assistant for a harbour office. House rules follow. {rules}"


def prefix_chats(seed: int, tokens: int, salt: str, turns: int) -> list[Messages]:
    """``turns`` chats sharing one long system prompt, each with a different short user turn;
    the first is the cold request, the rest are warm."""
    system = system_prompt(seed, tokens, salt)
    return [
        [{"role": "system", "content": system}, {"role": "user", "content": user_turn(seed, "prefix", i, tokens=32)}]
        for i in range(turns)
    ]
