"""Python's garbage collector pauses in every process of a run (a diagnostic, not part of Hearth).

With this folder on PYTHONPATH and GC_STATS_DIR set, each Python process that starts (gateway,
worker, bench client) records every collection's pause by generation (``gc.callbacks``) and
rewrites ``GC_STATS_DIR/<pid>.json`` every second: its command line, the tracked objects, and per
generation the count, total and longest pause, and the wall-clock time of every pause over 2 ms
(``long``: so pauses while loading can be told from those while serving).
``benchmarks/gc_probe/summary.py DIR`` prints them. ``GC_FREEZE_OFF=1`` makes ``gc.freeze`` a
no-op in that process (an A/B of Hearth's freeze after load). Without GC_STATS_DIR it does nothing.
"""

import os

if os.environ.get("GC_STATS_DIR"):
    import gc
    import json
    import sys
    import threading
    import time

    _dir = os.environ["GC_STATS_DIR"]
    _started: dict[int, float] = {}
    _stats = {g: [0, 0.0, 0.0] for g in range(3)}
    _long: list[tuple[float, int, float]] = []
    if os.environ.get("GC_FREEZE_OFF") == "1":
        gc.freeze = lambda: None

    def _pause(phase: str, info: dict) -> None:
        g = info["generation"]
        if phase == "start":
            _started[g] = time.perf_counter()
            return
        took = time.perf_counter() - _started.pop(g, time.perf_counter())
        s = _stats[g]
        s[0] += 1
        s[1] += took
        s[2] = max(s[2], took)
        if took > 0.002 and len(_long) < 200:
            _long.append((round(time.time(), 3), g, round(took * 1e3, 1)))

    def _write() -> None:
        os.makedirs(_dir, exist_ok=True)
        doc = {"pid": os.getpid(), "argv": sys.argv[:4], "frozen": gc.get_freeze_count(),
               "objects": len(gc.get_objects()),
               "gens": {g: {"n": s[0], "total_ms": round(s[1] * 1e3, 1), "max_ms": round(s[2] * 1e3, 2)}
                        for g, s in _stats.items()}, "long": _long}  # fmt: skip
        tmp = os.path.join(_dir, f".{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, os.path.join(_dir, f"{os.getpid()}.json"))

    def _loop() -> None:
        while True:
            time.sleep(1.0)
            try:
                _write()
            except Exception:
                pass

    gc.callbacks.append(_pause)
    threading.Thread(target=_loop, daemon=True, name="gc-probe").start()
