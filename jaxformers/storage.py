"""Where a run keeps its files: a local folder or any URL that etils.epath (fsspec) reaches.

``gs://bucket/run`` works with ``gcsfs`` installed (``pip install 'jaxformers[gcs]'``); other
fsspec backends (``s3://`` with s3fs, ...) the same way. Checkpoints and parameter exports go
through orbax, which writes URLs itself (TensorStore). Everything else a run writes goes through
this module:

- small files (``model.json``, the tokenizer, ``metrics.jsonl``, plots): read and written whole. An
  object store has no rename, but an object appears only once its upload is complete, so a whole
  write is already atomic there; locally a write goes to a temporary file that is renamed.
- files that libraries open by name (array_record datasets, token files, tokenizer models) are
  staged: ``mirror`` names a local folder for a remote one (under ``$JAXFORMERS_CACHE``, default
  ``~/.cache/jaxformers/remote``), ``download`` fills it, ``upload`` sends what was made there.
- the one-run-per-workdir lock: ``fcntl`` on a local disk; on object storage an object created with
  a "does not exist yet" precondition (GCS ``ifGenerationMatch=0``), which the holder refreshes
  and a later run takes over by creating the next one (``ObjectLock``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from etils import epath

# gcsfs >= 2025.x first asks the storage-control gRPC API for the bucket's layout (hierarchical or
# zonal), which hangs ~60 s against emulators and private endpoints; plain buckets do not need it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def is_url(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` other than ``file://``."""
    s = os.fspath(path)
    return "://" in s and not s.startswith("file://")


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute; a URL unchanged (minus a trailing slash)."""
    s = os.fspath(path)
    return s.rstrip("/") if is_url(s) else os.path.abspath(s)


def join(base: str | os.PathLike, *parts: str) -> str:
    base = os.fspath(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def exists(path) -> bool:
    return epath.Path(path).exists()


def isfile(path) -> bool:
    return epath.Path(path).is_file()


def isdir(path) -> bool:
    return epath.Path(path).is_dir()


def makedirs(path) -> None:
    """Creates a local folder (an object store has none to create)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
    return epath.Path(path).read_bytes()


def read_text(path) -> str:
    return epath.Path(path).read_text(encoding="utf-8")


def write_bytes(path, data: bytes) -> None:
    """Writes a whole file atomically: readers see the old content or the new, never a part."""
    if is_url(path):
        epath.Path(path).write_bytes(data)  # an object is visible only once fully uploaded
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove(path) -> None:
    epath.Path(path).unlink(missing_ok=True)


def listdir(path) -> list[str]:
    p = epath.Path(path)
    return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def walk_files(root) -> list[str]:
    """Every file under ``root``, as paths relative to it ('/'-separated), sorted."""
    root_p = epath.Path(root)
    if not root_p.is_dir():
        return []
    out, stack = [], [root_p]
    while stack:
        d = stack.pop()
        for c in d.iterdir():
            if c.is_dir():
                stack.append(c)
            else:
                out.append(str(c)[len(str(root_p)) :].lstrip("/"))
    return sorted(out)


def _copy_file(src, dst) -> None:
    if not is_url(dst):
        os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
    epath.Path(src).copy(epath.Path(dst), overwrite=True)


def move(src, dst) -> None:
    """Moves a file or a folder. On object storage that is a copy of every object, then a delete
    (an object store has no rename)."""
    if not is_url(src) and not is_url(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        os.replace(src, dst)
        return
    if isdir(src):
        files = walk_files(src)
        for rel in files:
            _copy_file(join(src, rel), join(dst, rel))
        for rel in files:
            remove(join(src, rel))
    else:
        _copy_file(src, dst)
        remove(src)


# -------------------------------------------------------------------------- staging to local disk


def cache_root() -> str:
    return os.environ.get("JAXFORMERS_CACHE") or os.path.expanduser("~/.cache/jaxformers")


def mirror(path: str) -> str:
    """The local folder that stands for ``path``: ``path`` itself when local, else a folder under
    ``cache_root()/remote`` named after the URL."""
    if not is_url(path):
        return path
    scheme, rest = os.fspath(path).split("://", 1)
    return os.path.join(cache_root(), "remote", scheme, *[p for p in rest.split("/") if p])


def _sync(src: str, dst: str, only=None) -> int:
    """Copies the files under ``src`` (or under its subpaths ``only``) that ``dst`` lacks or has
    with another size; returns how many. Files are written whole (content-keyed caches), so the
    size is the check."""
    n = 0
    for sub in only or ("",):
        s_root, d_root = (join(src, sub), join(dst, sub)) if sub else (src, dst)
        rels = walk_files(s_root) if isdir(s_root) else ([""] if exists(s_root) else [])
        for rel in rels:
            s, d = (join(s_root, rel), join(d_root, rel)) if rel else (s_root, d_root)
            if exists(d) and epath.Path(d).stat().length == epath.Path(s).stat().length:
                continue
            _copy_file(s, d)
            n += 1
    return n


def download(url: str, only=None) -> str:
    """Brings the files under ``url`` (or its subfolders/files ``only``) into ``mirror(url)``;
    returns that local folder. A local path is returned unchanged."""
    local = mirror(url)
    if is_url(url):
        os.makedirs(local, exist_ok=True)
        _sync(url, local, only)
    return local


def upload(url: str, only=None) -> int:
    """Sends the files of ``mirror(url)`` that ``url`` lacks (or ``only`` those subpaths)."""
    if not is_url(url):
        return 0
    return _sync(mirror(url), url, only)


# ---------------------------------------------------------------------------------- run lock


class LockLost(RuntimeError):
    """Another run took over this run's lock object: this run must write nothing more."""


class ObjectLock:
    """One run per remote workdir, on a store whose only atomic operation is "create this object
    if it does not exist yet" (GCS ``ifGenerationMatch=0``).

    The lock is a series of objects ``<path>-<epoch>``; the highest epoch decides. A run holds the
    lock by creating the next epoch; it rewrites its own object every ``ttl / 4`` seconds, and an
    object older than ``ttl`` (its holder was killed or paused without releasing it) is taken over
    by creating the epoch after it. Of two runs that take over at once only one creates that
    object; the other finds it fresh and stops. A holder never writes an object other than its
    own, so one paused past ``ttl`` cannot overwrite its successor's: it finds the higher epoch
    (``lost``) at its next refresh or ``check()``, and the loop stops before it writes a
    checkpoint. Release marks the holder's object released rather than deleting it, so epochs
    are never reused; older epochs are deleted. ``ttl`` defaults to ``$JAXFORMERS_LOCK_TTL`` or
    120 s.
    """

    def __init__(self, path: str, ttl: float | None = None):
        self.path = path
        self.ttl = float(ttl or os.environ.get("JAXFORMERS_LOCK_TTL", 120))
        self.token = uuid.uuid4().hex
        self.epoch: int | None = None
        self.lost: str | None = None  # why this lock is no longer ours, once it is not
        self._stop = threading.Event()
        self._thread = None

    def _record(self, **extra) -> bytes:
        held = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token}
        return json.dumps({**held, "time": time.time(), **extra}).encode()

    def _fs(self):
        import fsspec

        return fsspec.core.url_to_fs(self.path)

    def _name(self, epoch: int) -> str:
        return f"{self.path}-{epoch:08d}"

    def _epochs(self) -> list[int]:
        """The epochs whose objects exist, ascending (a fresh listing, not a cached one)."""
        fs, p = self._fs()
        parent, base = p.rsplit("/", 1)
        fs.invalidate_cache(parent)
        try:
            names = fs.ls(parent, detail=False)
        except FileNotFoundError:
            return []
        epochs = []
        for n in names:
            tail = n.rstrip("/").rsplit("/", 1)[-1]
            if tail.startswith(base + "-") and tail[len(base) + 1 :].isdigit():
                epochs.append(int(tail[len(base) + 1 :]))
        return sorted(epochs)

    def _create(self, epoch: int) -> bool:
        fs, p = self._fs()
        try:
            fs.pipe_file(f"{p}-{epoch:08d}", self._record(), mode="create")  # ifGenerationMatch=0
            return True
        except FileExistsError:
            return False

    def _in_use(self, name: str, held: dict, age: float) -> RuntimeError:
        return RuntimeError(
            f"{os.path.dirname(self.path)} is in use by another training run (host "
            f"{held.get('host')}, pid {held.get('pid')}; its lock {name} was refreshed "
            f"{age:.0f} s ago). Wait for it or choose another --workdir; if that run was killed, "
            f"its lock expires {self.ttl - age:.0f} s from now (or delete the object)"
        )

    def acquire(self) -> None:
        for _ in range(3):
            epochs = self._epochs()
            top = epochs[-1] if epochs else -1
            if top >= 0:
                try:
                    held = json.loads(read_bytes(self._name(top)))
                except (FileNotFoundError, ValueError):
                    continue  # deleted (or half-read) meanwhile: look again
                age = time.time() - float(held.get("time", 0))
                if not held.get("released") and age <= self.ttl:
                    raise self._in_use(self._name(top), held, age)
            if self._create(top + 1):
                self.epoch = top + 1
                break
            # Another run created that epoch first: the next look finds it fresh.
        else:
            raise RuntimeError(f"could not create the lock object {self._name(0)}; try again")
        self._remove_below(self.epoch)
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self._thread.start()

    def _remove_below(self, epoch: int) -> None:
        for e in self._epochs():
            if e < epoch:
                with contextlib.suppress(FileNotFoundError):
                    remove(self._name(e))

    def check(self) -> None:
        """Raises ``LockLost`` when another run has taken this lock over (a fresh listing)."""
        if self.lost is None and self.epoch is not None:
            newer = [e for e in self._epochs() if e > self.epoch]
            if newer:
                try:
                    held = json.loads(read_bytes(self._name(newer[-1])))
                except (FileNotFoundError, ValueError):
                    held = {}
                self.lost = (
                    f"another run (host {held.get('host')}, pid {held.get('pid')}) took over "
                    f"the lock of {os.path.dirname(self.path)} ({self._name(newer[-1])}): "
                    f"this run did not refresh its own for over {self.ttl:.0f} s (paused or cut "
                    "off). It stops here and writes nothing more, so as not to overwrite that "
                    "run's checkpoints"
                )
        if self.lost is not None:
            raise LockLost(self.lost)

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with contextlib.suppress(Exception):  # a missed refresh is retried next time
                self.check()
                write_bytes(self._name(self.epoch), self._record())
            if self.lost is not None:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.epoch is None:
            return
        with contextlib.suppress(Exception):
            self.check()
            self._remove_below(self.epoch)
            # Marked, not deleted: the next run creates the epoch after it, never this one again.
            write_bytes(self._name(self.epoch), self._record(released=True))
        self.epoch = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
