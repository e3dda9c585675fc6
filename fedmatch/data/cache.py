"""A process-safe on-disk cache for built domains.

Building a synthetic domain takes seconds, and in a Flower simulation every Ray worker asks for
the same domains at about the same moment. The cache therefore has three jobs: build each key at
most once across processes (a file lock plus a re-check once the lock is held), never let a
reader see a half-written file (write to a temporary file, then ``os.replace``), and survive a
damaged file left behind by a killed process (log a warning and rebuild instead of crashing).

Each file also stores the key it was built for and a SHA-256 of its arrays: a file copied in
under another name, edited, or truncated in a way ``np.load`` does not notice is rebuilt too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock

from fedmatch.data.types import DomainArrays

logger = logging.getLogger(__name__)

_ARRAY_FIELDS = ("x_train", "y_train", "x_test", "y_test")


class _CorruptCacheError(Exception):
    """The cache file exists but cannot be turned back into a ``DomainArrays``."""


def cached_domain(
    cache_dir: str | Path, key: str, build: Callable[[], DomainArrays]
) -> DomainArrays:
    """Return the domain stored under ``key`` in ``cache_dir``, building and storing it if needed.

    ``key`` names the file ``<cache_dir>/<key>.npz``; it must be a plain file name so that a key
    can never write outside the cache directory. Several processes may call this at once: only
    one of them runs ``build``, the others wait on ``<key>.lock`` and then load its result.
    """
    if not key or key in (".", "..") or "/" in key or "\\" in key or os.sep in key:
        raise ValueError(f"cache key must be a plain file name, got {key!r}")
    directory = Path(cache_dir).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise NotADirectoryError(
            f"cache directory {directory} cannot be used ({err.strerror}: {err.filename}); "
            "set run-config key 'cache-dir' to a directory"
        ) from None
    path = directory / f"{key}.npz"

    # Fast path without the lock: a finished file is only ever replaced atomically, so
    # reading it while another process holds the lock is safe.
    if path.exists():
        try:
            return _load(path, key)
        except _CorruptCacheError:
            pass  # decided (and reported) under the lock, where nobody else is rewriting it

    with FileLock(str(directory / f"{key}.lock")):
        if path.is_dir():
            # os.replace cannot put the rebuilt file there, and a folder is never removed here.
            raise IsADirectoryError(
                f"cache file {path} is a directory: remove it, or set run-config key "
                "'cache-dir' to another directory"
            )
        # Another process may have built it while we waited for the lock.
        if path.exists():
            try:
                domain = _load(path, key)
            except _CorruptCacheError as err:
                logger.warning("cache file %s is unreadable (%s); rebuilding it", path, err)
            else:
                logger.debug("loaded %s after waiting for the lock", path)
                return domain
        logger.info("building %r into cache %s", key, path)
        domain = build()
        if not isinstance(domain, DomainArrays):
            raise TypeError(
                f"build() for cache key {key!r} must return DomainArrays, "
                f"got {type(domain).__name__}"
            )
        _save_atomically(path, domain, key)
        return domain


def _digest(key: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(key.encode())
    for name in _ARRAY_FIELDS:
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _load(path: Path, key: str) -> DomainArrays:
    """Read a cache file, turning every way it can be damaged into ``_CorruptCacheError``."""
    try:
        with zipfile.ZipFile(path) as archive:
            packed = [
                i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED
            ]
        if packed:
            # Written uncompressed here; a compressed member may inflate to any size on load.
            raise _CorruptCacheError(f"compressed members {packed} (a cache file is not)")
        with np.load(path, allow_pickle=False) as data:
            fields = ("name", "key", "digest", *_ARRAY_FIELDS)
            missing = [name for name in fields if name not in data.files]
            if missing:
                raise _CorruptCacheError(f"missing arrays {missing}")
            arrays = {name: np.array(data[name]) for name in _ARRAY_FIELDS}
            name = str(data["name"])
            if str(data["key"]) != key:
                raise _CorruptCacheError(f"built for key {str(data['key'])!r}, not {key!r}")
            if str(data["digest"]) != _digest(key, arrays):
                raise _CorruptCacheError("its arrays do not match their stored SHA-256")
        # DomainArrays validates dtypes and shapes, which catches a file from a foreign writer.
        return DomainArrays(name=name, **arrays)
    except _CorruptCacheError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise _CorruptCacheError(f"{type(err).__name__}: {err}") from err


def _save_atomically(path: Path, domain: DomainArrays, key: str) -> None:
    """Write ``domain`` next to ``path`` under a temporary name, then rename it into place."""
    # The temporary file lives in the same directory so that os.replace is a same-filesystem
    # rename, which is atomic: readers see the old state or the complete new file, never a part.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            # Uncompressed: loading is what happens most (once per worker), and it is faster so.
            arrays = {field: getattr(domain, field) for field in _ARRAY_FIELDS}
            np.savez(
                handle,
                name=np.array(domain.name),
                key=np.array(key),
                digest=np.array(_digest(key, arrays)),
                **arrays,
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no stray temporary file behind if writing fails or the process is interrupted.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
