"""Greedy identity of speculative decoding on this machine's backend, in-process (no sockets):
the edit and prose prompts of `hearth bench --scenario edit`, decoded with speculation off,
with prompt lookup, with prompt lookup at exact (unbucketed) widths, and with chained steps
(``speculative_chain``: launched on the device's verdict on the step before); prints whether the
texts match and the usage. python benchmarks/spec_identity.py MODEL_FOLDER [MAX_TOKENS]"""

from __future__ import annotations

import sys
import time

from gateway.bench import prompts
from gateway.bench.edit import edit_messages
from shared.config import ModelConfig
from shared.protocol import Delta, Done, Generate
from worker.core import EngineCore
from worker.model import load_model


def run(core: EngineCore, messages: list, n: int) -> tuple[str, dict, float]:
    core.add(Generate(id="x", model="m", input={"messages": messages}, params={"temperature": 0, "max_tokens": n}))
    events, t = [], time.perf_counter()
    while core.has_work:
        events += core.step()
    text = "".join(e.text for e in events if isinstance(e, Delta))
    done = next(e for e in events if isinstance(e, Done))
    return text, done.usage, time.perf_counter() - t


def main() -> None:
    folder, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 128
    base = ModelConfig(name="m", path=folder, prompt_cache_bytes=0, warmup=False)
    off = EngineCore(load_model(base), base)
    spec_cfg = ModelConfig(name="m", path=folder, prompt_cache_bytes=0, speculative="lookup")
    spec = EngineCore(load_model(spec_cfg), spec_cfg)
    chain_cfg = ModelConfig(name="m", path=folder, prompt_cache_bytes=0, speculative="lookup", speculative_chain=True)
    chain = EngineCore(load_model(chain_cfg), chain_cfg)
    for name, msgs in (("edit", edit_messages(0)), ("prose", prompts.chat(0, "single", 1, 0, 0))):
        a, _, ta = run(off, msgs, n)
        b, ub, tb = run(spec, msgs, n)
        assert spec._decode is not None
        exact = spec._decode.width
        spec._decode.width = lambda w: w
        c, uc, tc = run(spec, msgs, n)
        spec._decode.width = exact
        d, ud, td = run(chain, msgs, n)
        print(
            f"{name}: lookup same={a == b} exact-width same={a == c} chained same={a == d}  "
            f"off {ta:.2f}s lookup {tb:.2f}s exact {tc:.2f}s chained {td:.2f}s"
        )
        keys = ("draft_tokens", "accepted_draft_tokens", "decode_steps")
        for label, u in (("lookup ", ub), ("exact  ", uc), ("chained", ud)):
            print(" ", label, {k: u.get(k) for k in keys})
        if a != b:
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print("  off   :", repr(a[max(0, i - 40) : i + 80]))
            print("  lookup:", repr(b[max(0, i - 40) : i + 80]))


if __name__ == "__main__":
    main()
