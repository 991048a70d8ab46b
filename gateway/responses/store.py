"""Stored responses (``store`` not false), for ``previous_response_id`` and
``GET``/``DELETE /v1/responses/{id}``: in memory, for the gateway's lifetime, bounded in count and
in bytes, the least recently used going first.

Each entry keeps the response object and the conversation it ends (the messages after the
system message, its own output included), so a follow-up's prompt is that conversation plus the
new input: the same leading tokens the worker's KV prompt cache holds from this turn.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidRequest

log = logging.getLogger("hearth.responses")


@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]
    size: int  # bytes, as JSON: what the byte bound counts


class ResponseStore:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Stored] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> bool:
        """Keep ``response`` (under its ``id``); False when it alone is over the byte bound or
        storing is off (a bound of 0)."""
        size = len(orjson.dumps(response)) + len(orjson.dumps(conversation))
        rid = response["id"]
        self.delete(rid)
        if size > self.max_bytes or self.max_entries == 0:
            log.warning("response %s not stored: %d bytes, the store holds at most %d", rid, size, self.max_bytes)
            return False
        self._entries[rid] = Stored(response, conversation, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.size
        return True

    def get(self, rid: str) -> Stored | None:
        entry = self._entries.get(rid)
        if entry is not None:
            self._entries.move_to_end(rid)
        return entry

    def delete(self, rid: str) -> bool:
        entry = self._entries.pop(rid, None)
        if entry is None:
            return False
        self.bytes -= entry.size
        return True

    def conversation(self, rid: str) -> list[dict[str, Any]]:
        """The conversation a ``previous_response_id`` continues; a 400 naming it if not kept."""
        entry = self.get(rid)
        if entry is None:
            raise InvalidRequest(
                f"previous response '{rid}' is not stored (unknown, deleted, evicted, or made with store: false)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return entry.conversation
