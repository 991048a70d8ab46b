"""The ``hearth`` command: ``serve``, ``worker``, ``keys``, ``import-gguf``, ``ps`` and ``bench``.

``serve`` builds the configuration once (flags or TOML; the embedded default model with
neither) and runs the gateway on uvicorn (with ``gateway.shutdown``'s graceful stop).
``worker`` runs a worker that joins a gateway on its own (over tcp:// with CURVE), ``keys``
makes a CURVE key pair. ``import-gguf`` converts a GGUF file into an MLX model folder in a
child process, since the gateway side never imports MLX. ``ps`` (gateway/ps.py) shows what a
running server has loaded; ``bench`` hands its arguments to ``gateway.bench`` (the load
generator; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from gateway.shutdown import HearthServer
from gateway.spawn import child_env, worker_command
from shared.config import DTYPES, ConfigError, ModelConfig, ServerConfig, load_toml, make_config

GRACE_AFTER_DRAIN = 5  # seconds uvicorn still gives open responses once shutdown_grace is over


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    if args.config:
        config = load_toml(args.config)
        server = config.server
        overrides = {
            k: v
            for k, v in (
                ("host", args.host),
                ("port", args.port),
                ("api_key_env", args.api_key_env),
                ("ollama", args.ollama or None),
                ("ollama_port", args.ollama_port),
            )
            if v is not None
        }
        if overrides:
            server = ServerConfig(**{**server.__dict__, **overrides})
        config = make_config(server, list(config.models))
    else:
        server = ServerConfig(
            host=args.host or "127.0.0.1",
            port=8080 if args.port is None else args.port,
            api_key_env=args.api_key_env,
            ollama=args.ollama,
            ollama_port=args.ollama_port,
        )
        models = []
        if args.model:
            path = Path(args.model).expanduser().resolve()
            if not path.exists():
                raise ConfigError(f"model path not found: {path}")
            name = args.name or path.name.removesuffix(".gguf")
            models.append(ModelConfig(name=name, path=str(path), dtype=args.dtype, tool_parser=args.tool_parser))
        config = make_config(server, models)
    app = create_app(config)
    names = ", ".join(m.name for m in config.models)
    logging.getLogger("hearth").info("serving %s on http://%s:%s", names, config.server.host, config.server.port)
    uv = HearthServer(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            log_level=args.log_level.lower(),
            timeout_graceful_shutdown=GRACE_AFTER_DRAIN,
        ),
        app.state.gate,
        config.server.shutdown_grace,
    )
    sockets = None
    if config.server.ollama_port:  # one app on two listeners: Hearth's port and Ollama's
        sockets = [_listen(config.server.host, p) for p in (config.server.port, config.server.ollama_port)]
        logging.getLogger("hearth").info(
            "Ollama's API also on http://%s:%s", config.server.host, config.server.ollama_port
        )
    uv.run(sockets=sockets)
    return 0 if uv.started else 3  # as uvicorn.run: the app could not start


def _listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn to serve on (it calls listen)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e}") from None
    sock.set_inheritable(True)
    return sock


def _keys(args: argparse.Namespace) -> int:
    from gateway.curve import make_keys

    public, secret = make_keys(args.folder, args.name)
    print(f"public key (share it; a worker's goes into the gateway's curve_authorized_keys): {public}")
    print(f"secret key (keep it; give it to the one that owns it only):                    {secret}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    """Run a worker that joins a gateway on its own: the model's settings from the same TOML as
    the gateway's (so they hash the same) or from --path; exec'd, so signals reach it."""
    if args.config:
        if args.path:
            raise ConfigError("--config and --path don't go together")
        model = load_toml(args.config).model(args.model)
        if model is None:
            raise ConfigError(f"{args.config} has no model named {args.model!r}")
    elif args.path:
        model = ModelConfig(name=args.model, path=str(Path(args.path).expanduser().resolve()), dtype=args.dtype)
    else:
        raise ConfigError("hearth worker needs the model's settings: --config FILE or --path PATH")
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    keys = [str(Path(v).expanduser().resolve()) if v else None for v in (args.server_key, args.key)]
    cmd = worker_command(args.connect, worker_id, model, server_key=keys[0], key=keys[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, child_env())


def _import_gguf(args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-m", "worker.gguf", args.file, args.out, "--dtype", args.dtype]
    return subprocess.call(cmd, env=child_env())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hearth", description="A local LLM server on MLX.")
    p.add_argument("--log-level", default=os.environ.get("HEARTH_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API")
    s.add_argument("--model", help="an MLX model folder or a GGUF file (default: the embedded SmolLM2)")
    s.add_argument("--name", help="the model's name in the API (default: from the path)")
    s.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights dtype for a GGUF import (auto: float32 on CPU, quantized on Metal)",
    )
    s.add_argument(
        "--tool-parser", default=None, help="mlx-lm tool parser for --model (default: inferred from its chat template)"
    )
    s.add_argument("--config", help="a hearth.toml with [server] and [[models]]")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--api-key-env", default=None, help="environment variable holding the API key")
    s.add_argument("--ollama", action="store_true", help="also serve Ollama's API (/api/chat, /api/tags, ...)")
    s.add_argument("--ollama-port", type=int, default=None, help="with --ollama: also listen on this port (11434)")
    g = sub.add_parser("import-gguf", help="convert a GGUF file into an MLX model folder")
    g.add_argument("file")
    g.add_argument("out")
    g.add_argument("--dtype", default="float32", choices=[d for d in DTYPES if d != "auto"])
    w = sub.add_parser("worker", help="run a model worker that joins a gateway over tcp:// (CURVE)")
    w.add_argument("--connect", required=True, help="the gateway's worker endpoint, e.g. tcp://gpu-box:5555")
    w.add_argument("--model", required=True, help="the model's name (as the gateway serves it)")
    w.add_argument("--config", help="the gateway's hearth.toml, for the model's settings")
    w.add_argument("--path", help="the model's folder or GGUF file (without --config)")
    w.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype for a GGUF import (with --path)")
    w.add_argument("--server-key", help="the gateway's public certificate (NAME.key) for CURVE")
    w.add_argument("--key", help="this worker's secret certificate (NAME.key_secret) for CURVE")
    w.add_argument("--worker-id", help="unique worker id (default: HOSTNAME-PID)")
    k = sub.add_parser("keys", help="make a CURVE key pair (NAME.key, NAME.key_secret) in a folder")
    k.add_argument("folder")
    k.add_argument("--name", default="gateway", help="file name stem (default: gateway)")
    sub.add_parser("bench", help="load-test OpenAI-compatible servers (see hearth bench --help)", add_help=False)
    sub.add_parser("ps", help="show what a running server has loaded (see hearth ps --help)", add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        from gateway.bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["ps"]:
        from gateway.ps import main as ps_main

        return ps_main(argv[1:])
    args = p.parse_args(argv)
    os.environ["HEARTH_LOG_LEVEL"] = args.log_level.upper()  # workers inherit it
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "serve":
            if args.config and args.model:
                p.error("--config and --model don't go together")
            return _serve(args)
        if args.command == "worker":
            if bool(args.server_key) != bool(args.key):
                p.error("--server-key and --key go together")
            return _worker(args)
        if args.command == "keys":
            return _keys(args)
        return _import_gguf(args)
    except ConfigError as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
