"""The gateway process never imports MLX: loading, OOM and crashes belong to workers."""

import subprocess
import sys

from tests.servers import ROOT


def test_gateway_modules_do_not_import_mlx() -> None:
    code = (
        "import sys, pkgutil, importlib, gateway, shared\n"
        "for pkg in (gateway, shared):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name != 'gateway.__main__': importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('mlx', 'mlx_lm', 'transformers'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
