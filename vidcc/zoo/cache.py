"""Where zoo exports live and how they are published: content-keyed directories, written atomically.

Layout: `<cache>/zoo/<key>/{model.onnx[, model.onnx.data], inputs.npz, reference.npz, meta.json}`.
An export is built in a private temp directory and renamed into place, so readers never see a half
entry; a lock file per key keeps two processes from doing the same export twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

# Bump when a change to the zoo's code changes what an export contains (configs, init, exporters).
ZOO_VERSION = 2

META = "meta.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The zoo's cache directory: `cache_dir/zoo` if given, else $VIDCC_ZOO_CACHE_DIR (used as is: lets
    tests isolate vidcc's other caches yet share exports), else $VIDCC_CACHE_DIR/zoo, else
    ~/.cache/vidcc/zoo."""
    if cache_dir is None and os.environ.get("VIDCC_ZOO_CACHE_DIR"):
        return Path(os.environ["VIDCC_ZOO_CACHE_DIR"]).expanduser()
    if cache_dir is None:
        cache_dir = os.environ.get("VIDCC_CACHE_DIR") or None
    if cache_dir is None:
        cache_dir = Path.home() / ".cache" / "vidcc"  # as vidcc.artifact does
    return Path(cache_dir).expanduser() / "zoo"


def library_versions() -> dict[str, str | None]:
    """Versions that change what an export contains, read without importing the libraries."""
    out = {}
    for dist in ("torch", "diffusers", "onnx", "onnxscript"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def weights_fingerprint(weights: Path) -> dict:
    """Path plus size and mtime of every file: a changed checkpoint gets a new key without hashing GBs."""
    files = sorted(p for p in weights.rglob("*") if p.is_file())
    return {"path": str(weights.resolve()),
            "files": [[str(p.relative_to(weights)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def cache_key(**fields) -> str:
    blob = json.dumps({"zoo_version": ZOO_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def is_complete(directory: Path) -> bool:
    return (directory / META).is_file()


@contextlib.contextmanager
def locked(root: Path, key: str):
    """Hold an exclusive lock for `key` (POSIX flock; elsewhere, the atomic rename alone protects)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root / f".{key}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging(root: Path, key: str):
    """A private directory to build in; removed afterwards unless `publish` moved it into place."""
    tmp = root / f".tmp-{key}-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished export into place. If another process got there first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if is_complete(final):
            return
        shutil.rmtree(final, ignore_errors=True)  # a stray partial directory (not written by this code)
        os.replace(tmp, final)


def write_meta(directory: Path, meta: dict) -> None:
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def read_meta(directory: Path) -> dict:
    return json.loads((directory / META).read_text())
