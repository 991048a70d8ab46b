"""The worker endpoint's security rules (shared.config) and the gateway's CURVE key loading
(gateway.curve): a tcp:// endpoint off loopback needs keys or an explicit opt-out."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.curve import load_curve, make_keys
from shared.config import ConfigError, ModelConfig, ServerConfig, load_toml, make_config

MODEL = [ModelConfig(name="m", path="/models/m")]


def config(**server: object) -> None:
    make_config(ServerConfig(**server), MODEL)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://gpu:1", "tcp://localhost.example:1"],
)
def test_tcp_off_loopback_without_curve_is_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="curve_secret_key and curve_authorized_keys.*insecure_tcp"):
        config(endpoint=endpoint)
    config(endpoint=endpoint, insecure_tcp=True)
    config(endpoint=endpoint, curve_secret_key="/k/gateway.key_secret", curve_authorized_keys="/k/workers")


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///x"])
def test_loopback_and_ipc_endpoints_need_no_keys(endpoint: str) -> None:
    config(endpoint=endpoint)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"endpoint": "tcp://127.0.0.1:1", "curve_secret_key": "/k"}, "go together"),
        ({"curve_secret_key": "/k", "curve_authorized_keys": "/d"}, "no tcp:// endpoint"),
        ({"endpoint": "ipc:///x", "curve_secret_key": "/k", "curve_authorized_keys": "/d"}, "need a tcp://"),
        ({"endpoint": "http://x:1"}, "tcp://HOST:PORT or ipc://PATH"),
        ({"shutdown_grace": -1.0}, "shutdown_grace"),
    ],
)
def test_inconsistent_endpoint_settings_are_config_errors(settings: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config(**settings)


def test_key_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    cfg = tmp_path / "conf" / "hearth.toml"
    cfg.write_text(
        '[server]\nendpoint = "tcp://0.0.0.0:5555"\ncurve_secret_key = "keys/gateway.key_secret"\n'
        'curve_authorized_keys = "keys/workers"\n[[models]]\nname = "m"\npath = "m"\n'
    )
    server = load_toml(cfg).server
    assert server.curve_secret_key == str(tmp_path / "conf" / "keys" / "gateway.key_secret")
    assert server.curve_authorized_keys == str(tmp_path / "conf" / "keys" / "workers")


def test_load_curve_reads_the_keys_and_checks_the_files(tmp_path: Path) -> None:
    public, secret = make_keys(tmp_path, "gateway")
    assert secret.stat().st_mode & 0o077 == 0  # the secret is private
    workers = tmp_path / "workers"
    workers.mkdir()
    curve = load_curve(ServerConfig(curve_secret_key=str(secret), curve_authorized_keys=str(workers)))
    assert curve is not None and len(curve.public) == 40 and curve.authorized == workers
    assert load_curve(ServerConfig()) is None
    for key, folder, words in (
        (tmp_path / "nope", workers, "no such file"),
        (public, workers, "holds no secret key"),
        (secret, tmp_path / "nowhere", "no such folder"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_curve(ServerConfig(curve_secret_key=str(key), curve_authorized_keys=str(folder)))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "m"], "needs the model's settings: --config FILE or --path PATH"),
        (["--model", "m", "--config", "CFG"], "has no model named 'm'"),
        (["--model", "m", "--config", "CFG", "--path", "/x"], "don't go together"),
    ],
)
def test_hearth_worker_says_what_is_missing(
    args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    cfg = tmp_path / "hearth.toml"
    cfg.write_text('[[models]]\nname = "other"\npath = "/models/other"\n')
    argv = ["worker", "--connect", "tcp://127.0.0.1:1", *[str(cfg) if a == "CFG" else a for a in args]]
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_hearth_serve_refuses_an_open_tcp_endpoint_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    cfg = tmp_path / "hearth.toml"
    cfg.write_text('[server]\nendpoint = "tcp://0.0.0.0:5555"\n[[models]]\nname = "m"\npath = "/models/m"\n')
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "accepts workers from other machines" in capsys.readouterr().err


def test_authorized_keys_are_read_at_each_handshake(tmp_path: Path) -> None:
    import zmq.auth

    from gateway.curve import AuthorizedKeys

    workers = tmp_path / "workers"
    workers.mkdir()
    public, _ = make_keys(tmp_path, "w1")
    key = zmq.auth.load_certificate(public)[0]
    keys = AuthorizedKeys(workers)
    assert not keys.callback("*", key)
    (workers / "w1.key").write_bytes(public.read_bytes())
    assert keys.callback("*", key)
    (workers / "w1.key").unlink()
    assert not keys.callback("*", key)
