"""CURVE (ZeroMQ's public-key encryption and authentication) for workers on other machines.

The gateway's tcp:// worker endpoint, when ``curve_secret_key`` is set, only accepts workers
whose public key is in the ``curve_authorized_keys`` folder; the traffic is encrypted. The key
files are pyzmq's certificate files (``zmq.auth``): ``NAME.key`` holds a public key and
``NAME.key_secret`` both keys; ``hearth keys`` makes a pair. Workers the gateway spawns itself
don't use CURVE: they connect to the private ipc:// socket in the 0700 runtime folder, which
the same ROUTER socket binds too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from shared.config import ConfigError, ServerConfig

log = logging.getLogger("hearth.curve")


@dataclass(frozen=True)
class CurveServer:
    public: bytes
    secret: bytes
    authorized: Path  # folder of the allowed workers' NAME.key files


def load_curve(server: ServerConfig) -> CurveServer | None:
    """The gateway's keys and the authorized folder, checked before anything starts."""
    if server.curve_secret_key is None or server.curve_authorized_keys is None:
        return None
    secret_file = Path(server.curve_secret_key)
    if not secret_file.is_file():
        raise ConfigError(f"[server] curve_secret_key: no such file {secret_file}")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as e:
        raise ConfigError(f"[server] curve_secret_key: {secret_file} is not a certificate file: {e}") from None
    if secret is None:
        raise ConfigError(f"[server] curve_secret_key: {secret_file} holds no secret key (use the .key_secret file)")
    folder = Path(server.curve_authorized_keys)
    if not folder.is_dir():
        raise ConfigError(f"[server] curve_authorized_keys: no such folder {folder}")
    if not any(folder.glob("*.key")):
        log.warning("no worker is authorized yet: %s holds no NAME.key file", folder)
    return CurveServer(public, secret, folder)


class AuthorizedKeys:
    """pyzmq's CURVE credentials provider: a worker's key is allowed when its ``NAME.key`` is in
    the folder. The folder is read at every handshake (they are rare: one per connection), so
    adding or removing a key takes effect for the next connection without a restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            allowed = key in zmq.auth.load_certificates(self.folder)
        except (OSError, ValueError) as e:
            log.error("cannot read the authorized worker keys in %s: %s", self.folder, e)
            return False
        if not allowed:
            log.warning("refused a worker: its CURVE key %s is not in %s", key.decode(errors="replace"), self.folder)
        return allowed


def start_authenticator(ctx: zmq.asyncio.Context, curve: CurveServer) -> AsyncioAuthenticator:
    """Check every CURVE handshake on ``ctx`` against the authorized keys."""
    auth = AsyncioAuthenticator(ctx, log=logging.getLogger("hearth.curve.zap"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=AuthorizedKeys(curve.authorized))
    return auth


def make_keys(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """A new key pair: ``folder/NAME.key`` (public, to share) and ``NAME.key_secret`` (0600)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(path, name))
    secret.chmod(0o600)
    return public, secret
