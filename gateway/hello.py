"""Whether a worker that says ``hello`` may join: the gateway's admission policy for workers.

Pure, so it is unit-tested without sockets; the engine client acts on the answer (drains a
refused worker, logs the reason)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Config
from shared.protocol import PROTOCOL_VERSION, Hello


@dataclass(frozen=True)
class Verdict:
    refusal: str | None = None  # why it may not join (None: it may)
    warning: str | None = None  # a mismatch worth a log line that does not refuse it


def judge(worker_id: str, msg: Hello, config: Config) -> Verdict:
    """A worker must speak this protocol version, be who its socket identity says, and serve a
    configured model; settings that differ from the gateway's are only a warning."""
    if msg.protocol != PROTOCOL_VERSION:
        return Verdict(f"it speaks protocol {msg.protocol}, this gateway {PROTOCOL_VERSION}")
    if msg.worker_id != worker_id:
        return Verdict(f"its hello says it is {msg.worker_id}")
    cfg = next((m for m in config.models if m.name == msg.model), None)
    if cfg is None:
        return Verdict(f"it serves unknown model {msg.model}")
    expected = cfg.config_hash()
    if msg.config_hash != expected:
        return Verdict(
            warning=f"it runs {msg.model} with other settings than this gateway's "
            f"(hash {msg.config_hash}, expected {expected})"
        )
    return Verdict()
