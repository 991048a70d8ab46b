"""shared/gc_freeze.py: what is alive when loading ends leaves the collector's walks; garbage
made before it is still collected, and what is made after it is collected as before."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT

PROBE = """
import gc, weakref
from shared.gc_freeze import freeze_loaded

class Node:
    pass

kept = [Node() for _ in range(1000)]
cycle = Node(); cycle.me = cycle; dead = weakref.ref(cycle); del cycle  # garbage before the freeze
frozen = freeze_loaded()
assert dead() is None, "the freeze kept a dead cycle"
assert frozen == gc.get_freeze_count() >= 1000, frozen
later = Node(); later.me = later; gone = weakref.ref(later); del later  # garbage after it
gc.collect()
assert gone() is None, "a cycle made after the freeze was not collected"
assert sum(1 for o in gc.get_objects() if isinstance(o, Node)) == 0  # the kept ones are frozen, not walked
print("ok", frozen)
"""


def test_freeze_keeps_the_living_out_of_collections_and_still_collects_garbage() -> None:
    # its own process: a freeze is for the life of the process that makes it
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ")
