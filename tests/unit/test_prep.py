"""worker.prep.Renderer: arrivals come out in the order they went in, each with its own
rendering or the error rendering raised; a cancelled or cleared arrival never comes out."""

from __future__ import annotations

import threading

import pytest

from shared.protocol import Generate
from worker.prep import Renderer


def req(rid: str) -> Generate:
    return Generate(id=rid, model="m", input={"prompt": rid}, params={})


def render(r: Generate) -> str:
    if r.id == "bad":
        raise ValueError("no template for this")
    return f"rendered {r.id} on {threading.current_thread().name}"


def test_arrivals_come_out_in_order_rendered_on_the_side_thread() -> None:
    gate = threading.Event()

    def slow_first(r: Generate) -> str:
        if r.id == "a":
            assert gate.wait(5)  # "a" is rendered last, yet taken first
        return render(r)

    rd = Renderer(slow_first)
    try:
        for rid in ("a", "b", "c"):
            rd.submit(req(rid))
        assert len(rd) == 3 and rd
        gate.set()
        out = [(m.id, got()) for m, got in rd.take()]
        assert [rid for rid, _ in out] == ["a", "b", "c"]
        assert all(text.startswith(f"rendered {rid} on hearth-render") for rid, text in out), out
        assert len(rd) == 0 and not rd
    finally:
        rd.close()


def test_a_rendering_error_is_raised_where_the_arrival_is_added() -> None:
    rd = Renderer(render)
    try:
        rd.submit(req("bad"))
        rd.submit(req("good"))
        taken = list(rd.take())
        with pytest.raises(ValueError, match="no template"):
            taken[0][1]()
        assert taken[1][1]().startswith("rendered good")
    finally:
        rd.close()


def test_cancelled_and_cleared_arrivals_are_never_added() -> None:
    rd = Renderer(render)
    try:
        for rid in ("x", "y", "z"):
            rd.submit(req(rid))
        assert rd.cancel("y") and not rd.cancel("nobody")
        assert [m.id for m, _ in rd.take()] == ["x", "z"]
        rd.submit(req("y"))  # the same id again later is a new arrival
        assert [m.id for m, _ in rd.take()] == ["y"]
        rd.submit(req("p"))
        rd.submit(req("q"))
        rd.clear()
        assert list(rd.take()) == [] and len(rd) == 0
    finally:
        rd.close()
