"""The benchmark's prompts: seeded, deterministic, and different for every request of a run.

Every request gets its own user turn so no server can answer one request from another's KV
cache; the same ``--seed`` gives the same prompts, run after run, on every target (so Hearth,
``mlx_lm.server`` and ``--raw`` see the same text). A prompt is picked from the seed and the
request's place in the run (scenario, level, client, request), never from a shared random
stream, so adding a scenario doesn't change the others' prompts.

Lengths are in words: about one token per word with this plain vocabulary (SmolLM2's tokenizer
gives ~1.1 tokens a word); the report shows the server's exact ``prompt_tokens``.
"""

from __future__ import annotations

import random
from typing import Any

Messages = list[dict[str, Any]]

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


def user_turn(seed: int, *where: object, words: int = 32) -> str:
    """One request's user message: a task line plus ``words`` words of seeded context."""
    rng = _rng(seed, "user", *where)
    task = f"{rng.choice(_TASKS)} {rng.choice(_SUBJECTS)} who {rng.choice(_EVENTS)}."
    return f"{task} Use these words: {filler(rng, words)}"


def chat(seed: int, *where: object, words: int = 32) -> Messages:
    """A one-turn chat for the request at ``where`` (e.g. ``("concurrent", 4, client, i)``)."""
    return [{"role": "user", "content": user_turn(seed, *where, words=words)}]


def system_prompt(seed: int, words: int, salt: str) -> str:
    """A long shared system prompt of about ``words`` words. ``salt`` goes first, so a run's
    prompt shares no leading tokens with any earlier run's (a prefix cache would match them)."""
    rules = filler(_rng(seed, "system"), words)
    return f"Session {salt}. You are a careful assistant for a harbour office. House rules follow. {rules}"


def prefix_chats(seed: int, words: int, salt: str, turns: int) -> list[Messages]:
    """``turns`` chats sharing one long system prompt, each with a different short user turn;
    the first is the cold request, the rest are warm."""
    system = system_prompt(seed, words, salt)
    return [
        [{"role": "system", "content": system}, {"role": "user", "content": user_turn(seed, "prefix", i, words=12)}]
        for i in range(turns)
    ]
