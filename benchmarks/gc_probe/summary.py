"""Prints what benchmarks/gc_probe/sitecustomize.py recorded: python summary.py GC_STATS_DIR"""

import json
import sys
import time
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("*.json")):
    d = json.loads(path.read_text())
    gens = "  ".join(f"gen{g}: {s['n']} x, {s['total_ms']} ms, max {s['max_ms']} ms" for g, s in d["gens"].items())
    print(f"{d['pid']:>7} {' '.join(d['argv'])[:60]:<60} objects {d['objects']:>7} frozen {d['frozen']:>7}  {gens}")
    for t, g, ms in d.get("long", []):
        if g == 2 or ms > 5:
            print(f"        {time.strftime('%H:%M:%S', time.gmtime(t))}.{int(t % 1 * 1000):03d} gen{g} {ms} ms")
