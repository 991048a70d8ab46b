"""The browser guard's pure decisions (gateway/origins.py) and its settings' validation."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from gateway.origins import binding_warnings, check_binding, is_loopback_address, policy
from shared.config import ConfigError, ServerConfig, validate_server

PORT = 8080


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "127.3.4.5", "::1", "[::1]"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback_address(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "192.168.1.5", "evil.example", "localhost.evil.example", "::", "[fd00::1]"]
)
def test_not_loopback(host: str) -> None:
    assert not is_loopback_address(host)


@pytest.mark.parametrize("host", ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "LocalHost:8080"])
def test_loopback_hosts_of_the_port_are_served(host: str) -> None:
    assert policy(ServerConfig()).host_problem(host, PORT) is None


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8080",
        "evil.example",
        "localhost:9999",  # a loopback name of another port: something forwarded it
        "localhost",  # port 80, not 8080
        "192.168.1.5:8080",  # an IP literal of another interface, while bound to loopback
        "localhost.evil.example:8080",
        "",
        None,
        "local host:8080",
        "localhost:99999",
    ],
)
def test_other_hosts_are_refused_on_loopback(host: str | None) -> None:
    assert policy(ServerConfig()).host_problem(host, PORT) is not None


def test_off_loopback_ip_literals_are_served_names_are_not() -> None:
    p = policy(ServerConfig(host="0.0.0.0"))
    assert p.host_problem("192.168.1.5:8080", PORT) is None
    assert p.host_problem("[fd00::1]:8080", PORT) is None
    assert p.host_problem("localhost:8080", PORT) is None
    assert p.host_problem("mac.local:8080", PORT) is not None  # configured names only (allowed_hosts)


H = "127.0.0.1:8080"


def headers(**h: str) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in {"host": H, **h}.items()})


def test_safe_methods_are_never_refused() -> None:
    p = policy(ServerConfig())
    for method in ("GET", "HEAD"):
        assert p.origin_problem(method, headers(origin="http://evil.example", sec_fetch_site="cross-site")) is None


def test_requests_without_origin_are_unaffected() -> None:
    p = policy(ServerConfig())
    assert p.origin_problem("POST", headers()) is None
    assert p.origin_problem("POST", headers(sec_fetch_site="none")) is None
    assert p.origin_problem("POST", headers(sec_fetch_site="same-origin")) is None


@pytest.mark.parametrize("method", ["POST", "OPTIONS", "PUT", "DELETE", "PATCH"])
def test_foreign_origins_are_refused_on_unsafe_methods(method: str) -> None:
    p = policy(ServerConfig(cors_origins=["http://localhost:3000"]))
    for origin in (
        "http://evil.example",
        "null",
        "http://localhost:3001",
        "https://localhost:3000",
        "http://127.0.0.1",
    ):
        assert p.origin_problem(method, headers(origin=origin)) is not None, origin
    assert p.origin_problem(method, headers(sec_fetch_site="cross-site")) is not None


def test_own_and_configured_origins_are_trusted() -> None:
    p = policy(ServerConfig(cors_origins=["http://localhost:3000"]))
    assert p.origin_problem("POST", headers(origin="http://127.0.0.1:8080")) is None
    assert p.origin_problem("POST", headers(origin="https://127.0.0.1:8080")) is None  # behind a TLS proxy
    assert p.origin_problem("POST", headers(origin="http://localhost:3000", sec_fetch_site="cross-site")) is None


def test_star_trusts_every_origin_and_warns_loudly() -> None:
    server = ServerConfig(cors_origins="*")
    assert policy(server).origin_problem("POST", headers(origin="http://evil.example")) is None
    (warning,) = binding_warnings(server, has_key=False)
    assert "ANY web page" in warning
    assert policy(ServerConfig(cors_origins=["*"])).any_origin


def test_binding_warning_and_refusal() -> None:
    assert binding_warnings(ServerConfig(), has_key=False) == []
    assert binding_warnings(ServerConfig(host="0.0.0.0"), has_key=True) == []
    (warning,) = binding_warnings(ServerConfig(host="0.0.0.0"), has_key=False)
    assert "0.0.0.0" in warning and "API key" in warning
    check_binding(ServerConfig(host="0.0.0.0"), has_key=False)  # a warning only, by default
    check_binding(ServerConfig(host="0.0.0.0", require_api_key_off_loopback=True), has_key=True)
    check_binding(ServerConfig(require_api_key_off_loopback=True), has_key=False)  # loopback: fine
    with pytest.raises(ConfigError, match="require_api_key_off_loopback"):
        check_binding(ServerConfig(host="192.168.1.5", require_api_key_off_loopback=True), has_key=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_hosts": ["hearth.lan:8080"]},
        {"allowed_hosts": ["http://hearth.lan"]},
        {"allowed_hosts": ["a.*.lan"]},
        {"allowed_hosts": [""]},
        {"cors_origins": ["http://localhost:3000/"]},
        {"cors_origins": ["localhost:3000"]},
        {"cors_origins": "http://a.example/path"},
        {"cors_origins": ["null"]},
    ],
)
def test_bad_browser_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        validate_server(ServerConfig(**kwargs))  # type: ignore[arg-type]


def test_good_browser_settings() -> None:
    validate_server(
        ServerConfig(
            allowed_hosts=["hearth.lan", "*.example.com", "[fd00::1]", "10.0.0.2", "*"],
            cors_origins=["http://localhost:3000", "https://chat.example.com:8443", "chrome-extension://abcdef"],
        )
    )
    validate_server(ServerConfig(cors_origins="*"))
