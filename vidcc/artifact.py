"""Artifacts and their content-hashed cache.

An artifact is a directory: the optimized `model.onnx` (+ external data), the target's engine or
library files, the sample inputs and the outputs verified on them (`inputs.npz`, `outputs.npz`), and
`manifest.json` (schema below) listing every file with its sha256 and size.

The cache lives under `$VIDCC_CACHE_DIR` (default `~/.cache/vidcc`) in `artifacts/<key>/`, where the
key hashes everything a build depends on: the input model's bytes (and external data), the expanded
pipeline, the target and its options, the bindings, the sample inputs, and the tool versions (vidcc
with a digest of its sources, onnx, onnxruntime, the backend). Same key -> no rebuild. A build happens
in a temporary directory beside the entry and is renamed into place; an `fcntl.flock` per key makes a
second process wait and then reuse the first one's result. An entry whose manifest is unreadable or
whose files do not match their hashes is moved aside and rebuilt.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vidcc.errors import VidccError

SCHEMA = "vidcc.artifact/1"
MANIFEST = "manifest.json"
TIMINGS = "timings.json"  # when and how long: kept out of the manifest so that it is deterministic
INPUTS = "inputs.npz"
OUTPUTS = "outputs.npz"


class ArtifactError(VidccError):
    """An artifact directory is missing, incomplete or corrupt."""


def cache_dir() -> Path:
    return Path(os.environ.get("VIDCC_CACHE_DIR") or Path.home() / ".cache" / "vidcc")


# ---- hashing ------------------------------------------------------------------------------------

_digests: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def model_digest(model_path: str | Path) -> str:
    """Digest of an ONNX file and the external data files it references."""
    import onnx

    model_path = Path(model_path)
    h = hashlib.sha256(file_sha256(model_path).encode())
    try:
        proto = onnx.load_model(str(model_path), load_external_data=False)
        locations = sorted({e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"})
    except Exception:
        locations = []
    for loc in locations:
        p = model_path.parent / loc
        h.update(loc.encode() + (file_sha256(p).encode() if p.is_file() else b"<missing>"))
    return h.hexdigest()


def feeds_digest(feeds: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(feeds):
        a = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _source_digest() -> str:
    """vidcc's own code (core, built-in passes and targets): a change to a pass must rebuild."""
    import vidcc
    import vidcc.passes
    import vidcc.targets

    h = hashlib.sha256()
    for pkg in (vidcc, vidcc.passes, vidcc.targets):
        root = Path(pkg.__file__).parent
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def tool_versions(target) -> dict[str, str]:
    import vidcc

    found = {"vidcc": f"{vidcc.__version__}+src.{_source_digest()}"}
    for dist in ("onnx", "onnxruntime"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for ep in metadata.entry_points(group="vidcc"):  # third-party passes and targets change results too
        if ep.dist is not None and ep.dist.name != "vidcc":
            found[f"plugin:{ep.name}"] = ep.dist.version
    found.update(target.tool_versions())
    return found


def content_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ---- the artifact -------------------------------------------------------------------------------

def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, TIMINGS):
            files[p.relative_to(directory).as_posix()] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    return files


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_volatile(key: str) -> bool:
    return key == "created" or key == "seconds" or key.endswith("_seconds")


def split_volatile(tree: Any) -> tuple[Any, Any]:
    """(tree without timestamps and durations, those values at the same paths, or None)."""
    if isinstance(tree, dict):
        stable, volatile = {}, {}
        for k, v in tree.items():
            if _is_volatile(k):
                volatile[k] = v
            else:
                stable[k], sub = split_volatile(v)
                if sub is not None:
                    volatile[k] = sub
        return stable, (volatile or None)
    if isinstance(tree, list):
        pairs = [split_volatile(v) for v in tree]
        subs = [sub for _, sub in pairs]
        return [item for item, _ in pairs], (subs if any(sub is not None for sub in subs) else None)
    return tree, None


def merge_volatile(tree: Any, volatile: Any) -> None:
    """Put split_volatile's second half back in place (in memory only)."""
    if isinstance(tree, dict) and isinstance(volatile, dict):
        for k, v in volatile.items():
            if k in tree and isinstance(v, (dict, list)):
                merge_volatile(tree[k], v)
            elif k not in tree:
                tree[k] = v
    elif isinstance(tree, list) and isinstance(volatile, list):
        for item, v in zip(tree, volatile):
            if v is not None:
                merge_volatile(item, v)


def _read_timings(path: Path) -> Any:
    try:
        return json.loads((path / TIMINGS).read_text())
    except (OSError, ValueError):
        return {}  # timings are informative only; a missing or broken file costs nothing


class Artifact:
    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, *, check_files: bool = True) -> "Artifact":
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"'{path}' is not a vidcc artifact (no {MANIFEST})")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"'{path / MANIFEST}' is unreadable: {exc}") from None
        if isinstance(manifest, dict):
            merge_volatile(manifest, _read_timings(path))
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise ArtifactError(f"'{path}' has manifest schema {manifest.get('schema') if isinstance(manifest, dict) else '?'}, "
                                f"expected {SCHEMA}")
        if check_files:
            problem = _file_problem(path, manifest.get("files") or {})
            if problem:
                raise ArtifactError(f"artifact '{path}' is corrupt: {problem}")
        return cls(path, manifest)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def target_name(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def passed(self) -> bool:
        return bool(self.manifest.get("verification", {}).get("verdict", {}).get("passed", False))

    def target(self):
        from vidcc import plugins
        from vidcc.errors import TargetError

        entry = plugins.registry().targets.get(self.target_name)
        if entry is None:
            raise TargetError(f"artifact was built for target '{self.target_name}', which is not registered here")
        return entry.obj

    def runner(self):
        from vidcc.errors import TargetError

        if self.manifest.get("routes"):  # compiled per routing decision (vidcc/specialize.py)
            raise ArtifactError(f"artifact '{self.path}' has one engine per routing decision: run one step "
                                f"(`vidcc run ARTIFACT --step K`, or vidcc.specialize.engine_runner)")

        target = self.target()
        why = target.available()
        if not why:
            raise TargetError(f"target '{target.name}' cannot run here: {why.reason}" + (f" ({why.hint})" if why.hint else ""))
        return target.load(self.path, self.manifest)

    def _npz(self, name: str) -> dict[str, np.ndarray] | None:
        p = self.path / name
        if not p.is_file():
            return None
        with np.load(p) as data:
            return {k: data[k] for k in data.files}

    def sample_inputs(self) -> dict[str, np.ndarray] | None:
        return self._npz(INPUTS)

    def verified_outputs(self) -> dict[str, np.ndarray] | None:
        return self._npz(OUTPUTS)


def _file_problem(path: Path, files: dict[str, dict[str, Any]]) -> str | None:
    if not files:
        return "its manifest lists no files"
    for rel, info in files.items():
        p = path / rel
        if not p.is_file():
            return f"file '{rel}' is missing"
        if p.stat().st_size != info.get("bytes"):
            return f"file '{rel}' has {p.stat().st_size} bytes, the manifest says {info.get('bytes')} (truncated?)"
        if file_sha256(p) != info.get("sha256"):
            return f"file '{rel}' does not match its sha256"
    return None


# ---- the cache ----------------------------------------------------------------------------------

class Cache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else cache_dir() / "artifacts"

    def entry(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Artifact | None:
        """The valid entry for key, or None (a corrupt entry is moved aside)."""
        path = self.entry(key)
        if not path.exists():
            return None
        try:
            artifact = Artifact.open(path)
            if artifact.key != key:
                raise ArtifactError("manifest key does not match its directory")
            return artifact
        except ArtifactError:
            self._discard(path)
            return None

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, Any]], *, reuse: bool = True
                     ) -> tuple[Artifact, bool]:
        """(artifact, cached). `build(tmp_dir)` fills a fresh directory and returns its manifest (without
        "files" and "key", added here); the result is renamed into place only when complete."""
        with self.lock(key):
            if reuse:
                found = self.get(key)
                if found is not None:
                    return found, True
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=self.root))
            try:
                manifest = build(tmp)
                manifest.update(schema=SCHEMA, key=key, files=describe_files(tmp))
                stable, volatile = split_volatile(manifest)
                write_json_atomic(tmp / TIMINGS, volatile or {})
                write_json_atomic(tmp / MANIFEST, stable)
                final = self.entry(key)
                if final.exists():
                    self._discard(final)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return Artifact(final, manifest), False

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{os.urandom(3).hex()}")
        try:
            os.replace(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def export(artifact: Artifact, dest: str | Path) -> Path:
    """Copy (hard-link where possible) an artifact to dest atomically. An existing dest is replaced
    only if it is empty or a vidcc artifact, so user data is never clobbered."""
    dest = Path(dest).absolute()
    if dest.exists():
        if not dest.is_dir():
            raise ArtifactError(f"'{dest}' exists and is not a directory")
        if any(dest.iterdir()) and not (dest / MANIFEST).is_file():
            raise ArtifactError(f"'{dest}' exists and is not a vidcc artifact; refusing to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for src in sorted(artifact.path.rglob("*")):
            target = tmp / src.relative_to(artifact.path)
            if src.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
