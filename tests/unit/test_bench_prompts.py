"""The benchmark's prompts are seeded and deterministic, distinct per request, and the prefix
scenario's chats share one salted system prompt."""

from __future__ import annotations

from gateway.bench import prompts
from gateway.bench.scenarios import WARM, Plan


def test_same_seed_same_prompts_different_seed_different() -> None:
    a = [prompts.chat(7, "concurrent", 4, c, 0) for c in range(4)]
    assert a == [prompts.chat(7, "concurrent", 4, c, 0) for c in range(4)]
    assert a != [prompts.chat(8, "concurrent", 4, c, 0) for c in range(4)]


def test_every_request_of_a_plan_gets_its_own_prompt() -> None:
    plan = Plan(clients=(1, 2, 4), requests_per_client=3, seed=3)
    seen = [
        plan.messages(s, n, c, i)[0]["content"]
        for s, n in plan.steps()
        if s != "prefix"
        for c in range(n)
        for i in range(plan.requests_per_client)
    ]
    assert len(seen) == len(set(seen)) == 3 * (1 + 1 + 2 + 4)


def test_lengths_follow_the_requested_tokens() -> None:
    short = prompts.user_turn(0, "x", tokens=40)
    long = prompts.user_turn(0, "x", tokens=400)
    assert len(long.split()) > 5 * len(short.split()) / 2
    words = len(prompts.system_prompt(0, 1500, "salt").split())
    assert abs(words - 1500 * prompts.WORDS_PER_TOKEN) < 30


def test_prefix_chats_share_a_salted_system_prompt() -> None:
    chats = prompts.prefix_chats(1, 300, "run-1", turns=4)
    systems = {c[0]["content"] for c in chats}
    users = {c[1]["content"] for c in chats}
    assert len(systems) == 1 and len(users) == 4
    (system,) = systems
    other = prompts.prefix_chats(1, 300, "run-2", turns=1)[0][0]["content"]
    assert system.startswith("Session run-1.") and other.startswith("Session run-2.")
    assert system.split(".", 1)[1] == other.split(".", 1)[1]  # only the salt differs, and it leads


def test_plan_round_trips_through_json_dicts() -> None:
    plan = Plan(scenarios=("single", "concurrent"), clients=(1, 3), duration=2.5, salt="abc")
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.steps() == [("single", 1), ("concurrent", 1), ("concurrent", 3)]


def test_each_round_gets_new_prompts_and_round_zero_keeps_the_old_ones() -> None:
    plan = Plan(clients=(2,), requests_per_client=2, rounds=3, warm_round=True)
    by_round = {
        rnd: {plan.messages("concurrent", 2, c, i, rnd)[0]["content"] for c in range(2) for i in range(2)}
        for rnd in (WARM, 0, 1, 2)
    }
    assert all(len(p) == 4 for p in by_round.values())
    assert len(set().union(*by_round.values())) == 16  # no prompt repeats across rounds
    assert by_round[0] == {plan.messages("concurrent", 2, c, i)[0]["content"] for c in range(2) for i in range(2)}
    assert by_round[0] == {prompts.chat(0, "concurrent", 2, c, i)[0]["content"] for c in range(2) for i in range(2)}
