"""``python -m worker``: start one model worker (normally spawned by the gateway's supervisor).

On Linux it first makes sure Debian's OpenBLAS is preloaded (see ``shared.blas``): the loader
only honours LD_PRELOAD at exec, so a worker started without it re-executes itself once.
It also sets the backend's MLX settings (``shared.device.worker_env``) before MLX is imported.
"""

import os
import sys

from shared.blas import with_openblas

if __name__ == "__main__":
    env = with_openblas(os.environ)
    if env is not None:
        os.execve(sys.executable, [sys.executable, "-m", "worker", *sys.argv[1:]], env)
    from shared.device import apply_worker_env, installed_backend

    apply_worker_env(os.environ, installed_backend())  # before MLX is imported
    from worker.proc import main

    sys.exit(main())
