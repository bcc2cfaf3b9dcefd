"""Artifact storage over fsspec: the same code on a local disk, S3 (s3fs) and ``memory://``.

Layout: ``{root}/{stage}/{version}/...`` where ``version`` is a short hash of the stage's config and
its upstream URIs. A stage writes all its files, then ``_SUCCESS`` (a small JSON manifest: counts,
config, inputs). A stage folder with a marker is complete and is never recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync
from fsspec.core import url_to_fs
from pydantic import BaseModel

from react_core.errors import ReactError
from react_core.secrets import reveal

_logger = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
# Stage.lock: a re-entrant lock per stage lock file for the threads of this process, and how deep the holding
# thread is (an flock is held once per process: a second flock of the same file from this process would wait
# for itself).
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD: dict[str, int] = {}
_WARNED: set[str] = set()  # damaged stage files already reported by Stage.done
_VERSION = re.compile(r"[0-9a-f]{12}")  # a stage folder's version (version_hash)
# Files up to this size on an object store get a sha256 in _SUCCESS (read back once when the stage completes);
# larger ones are watched by their etag alone. On a local disk every file is hashed (reading is cheap there).
DIGEST_MAX_BYTES = 256 << 20
_VERIFIED: dict[tuple[str, int, str], bool] = {}  # (uri, size, tag) -> content equal to the recorded sha256


def _tag(entry: Mapping[str, Any]) -> str:
    """What changes when a file is written again: the etag of an object; on a disk the modification time and the
    inode (an atomic write makes a new inode, so two writes within the clock's resolution still differ)."""
    if entry.get("mtime") is not None and entry.get("ino") is not None:
        return f"{entry['mtime']}:{entry['ino']}"
    for key in ("ETag", "etag", "mtime", "LastModified", "created"):
        if entry.get(key) is not None:
            return str(entry[key]).strip('"')
    return ""


def _endpoint(options: dict[str, Any] | None) -> str | None:
    """The S3 endpoint a client of these options talks to: theirs, else fsspec's or botocore's variable."""
    return (
        (options or {}).get("endpoint_url")
        or os.environ.get("FSSPEC_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )


class StorageError(ReactError, RuntimeError):
    """A storage root or artifact could not be used; the message names the URI and the fix."""


def normalize_uri(uri: str) -> str:
    """Local paths become absolute ``file://`` URIs; other URIs are returned without a trailing slash."""
    uri = uri.strip()
    if not uri:
        raise StorageError("storage root is empty; fix: set storage.root to a folder or an s3:// URI")
    if "://" not in uri:
        return "file://" + str(Path(uri).expanduser().resolve())
    if uri.startswith("file://"):
        return "file://" + str(Path(uri[len("file://") :]).expanduser().resolve())
    return uri.rstrip("/")


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/' (never os.sep)."""
    out = uri.rstrip("/")
    for p in parts:
        if p:
            out = out + "/" + p.strip("/")
    return out


def local_path(uri: str) -> str | None:
    """The local filesystem path of a ``file://`` URI (or plain path), else None."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if "://" not in uri:
        return str(Path(uri).resolve())
    return None


def version_hash(
    config: BaseModel | Mapping[str, Any] | None, inputs: Mapping[str, str] | None = None, schema: int = 1
) -> str:
    """Short, stable hash of a stage's config, its upstream URIs and its schema (the stage's ``version``).

    ``schema`` is the version of what the stage writes: bumped when its files change, so a folder written
    in an older layout is never adopted (and no reader keeps code for old layouts). Schema 1, every stage's
    first, is left out of the hash, so stages that never changed keep their versions.
    """
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    identity = {"config": config or {}, "inputs": dict(inputs or {})}
    if schema != 1:
        identity["schema"] = schema
    payload = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


# The storage probe made before any stage (Storage.check_writable) waits at most this long for an answer.
PROBE_TIMEOUT_S = 10


def _fs(
    uri: str, options: Mapping[str, Any] | None = None, probe: bool = False
) -> tuple[fsspec.AbstractFileSystem, str]:
    opts = reveal(options or {})  # credentials are SecretStr until here (react_core.secrets)
    if uri.startswith("s3://"):
        # One attempt and short timeouts so an unreachable endpoint fails in seconds, not minutes
        # (botocore's default retries a refused connection for a long time).
        cfg = dict(opts.pop("config_kwargs", {}) or {})
        cfg.setdefault("connect_timeout", 5)
        cfg.setdefault("read_timeout", 60)
        cfg.setdefault("retries", {"max_attempts": 2})
        if probe:  # an endpoint that accepts connections but never answers: named in seconds, not 15 minutes
            cfg["read_timeout"] = min(cfg["read_timeout"], PROBE_TIMEOUT_S)
            cfg["retries"] = {"max_attempts": 1}
            opts["skip_instance_cache"] = True  # its own instance: the retries below must not reach the others
        opts["config_kwargs"] = cfg
        if "endpoint_url" in opts:
            opts.setdefault("client_kwargs", {})
            opts["client_kwargs"] = {**opts["client_kwargs"], "endpoint_url": opts.pop("endpoint_url")}
    fs, path = url_to_fs(uri, **opts)
    if probe and hasattr(fs, "retries"):
        fs.retries = 1  # s3fs retries a timed-out call 5 times with backoff on top of botocore's attempts
    return fs, path


@dataclass
class Storage:
    """A storage root and its filesystem.

    Args:
        root: local path or fsspec URI.
        options: fsspec storage options (``endpoint_url`` for S3-compatible servers, credentials, ...).
    """

    root: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials: never printed

    def __post_init__(self) -> None:
        self.root = normalize_uri(self.root)
        self._fs, self._pid = None, None

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem, built in the process that uses it.

        Why not once in ``__init__``: an s3fs instance owns an event loop and an HTTP session that cannot cross
        a fork (``RuntimeError: This class is not fork-safe`` in a DataLoader worker) nor be pickled to a Dask
        worker or a spawned process. A Storage handed to another process therefore rebuilds its filesystem
        there (fsspec drops its instance cache in a forked child, so this is a fresh session).
        """
        if self._fs is None or self._pid != os.getpid():
            self._fs, _ = _fs(self.root, self.options)
            self._pid = os.getpid()
        return self._fs

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "options": dict(self.options or {})}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root, self.options = state["root"], state["options"]
        self._fs, self._pid = None, None

    # -- addressing ---------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        return join(self.root, *parts)

    def path(self, uri: str) -> str:
        """The filesystem-internal path of a URI under any root of this filesystem."""
        return self.fs._strip_protocol(uri)

    def url(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    # -- checks ---------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Write and delete a probe object under the root; raise :class:`StorageError` naming the fix."""
        probe = self.uri(f".probe-{uuid.uuid4().hex[:8]}")
        try:
            if local_path(self.root) is not None:
                os.makedirs(local_path(self.root), exist_ok=True)
            fs, _ = _fs(self.root, self.options, probe=True)
            if isinstance(fs, AsyncFileSystem):
                # A deadline on the whole call: botocore's read timeout does not cover a PUT waiting for the
                # server's "100 Continue", so an endpoint that accepts and never answers hung here for minutes.
                sync(fs.loop, fs._pipe_file, self.path(probe), b"ok", timeout=PROBE_TIMEOUT_S)
                sync(fs.loop, fs._rm_file, self.path(probe), timeout=PROBE_TIMEOUT_S)
            else:
                fs.pipe_file(self.path(probe), b"ok")
                fs.rm_file(self.path(probe))
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
            kind = type(exc).__name__
            hint = "check that it exists and that you may write there"
            if "timeout" in kind.lower() or "timed out" in str(exc).lower():
                endpoint = _endpoint(self.options)
                raise StorageError(
                    f"storage root {self.root}: the endpoint {endpoint or '(AWS default)'} accepted the connection but "
                    f"did not answer within {PROBE_TIMEOUT_S} s ({kind}); fix: check that the S3 service there is up "
                    "(storage.options.endpoint_url), or raise storage.options.config_kwargs.read_timeout for a slow one"
                ) from None
            if self.root.startswith("s3://"):
                endpoint = _endpoint(self.options)
                hint = (
                    f"check the bucket exists, the credentials, and that the endpoint "
                    f"{endpoint or '(AWS default)'} is reachable (storage.options.endpoint_url)"
                )
            detail = " ".join(str(exc).split())  # one line, whatever the backend's message looks like
            raise StorageError(f"storage root {self.root} is not writable ({kind}: {detail}); fix: {hint}") from None

    # -- files ------------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return self.fs.exists(self.path(uri))

    def read_bytes(self, uri: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(uri))
        except FileNotFoundError:
            raise StorageError(f"artifact {uri} does not exist; fix: run the stage that writes it first") from None

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def read_many(self, uris: Sequence[str]) -> list[bytes]:
        """The contents of ``uris``, in order, fetched concurrently where the filesystem can (s3fs' ``cat``
        of a list runs its requests in parallel; one ``read_bytes`` each would be a round trip each)."""
        if not uris:
            return []
        paths = [self.path(u) for u in uris]
        try:
            found = self.fs.cat(paths, on_error="raise")  # a list in: a dict {path: bytes} out
        except FileNotFoundError:
            missing = next((u for u in uris if not self.exists(u)), uris[0])
            raise StorageError(f"artifact {missing} does not exist; fix: run the stage that writes it first") from None
        return [found[p] for p in paths]

    def write_bytes(self, uri: str, data: bytes) -> str:
        """Atomic single-file write.

        Local disk: write a temporary sibling then ``os.replace``. Object stores (S3, memory): a single
        PUT is already atomic (readers see the old object or the new one, never a part), so write directly.
        """
        lp = local_path(uri)
        if lp is not None:
            os.makedirs(os.path.dirname(lp), exist_ok=True)
            tmp = f"{lp}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, lp)
        else:
            self.fs.pipe_file(self.path(uri), data)
        return uri

    def write_json(self, uri: str, obj: Any) -> str:
        return self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def put_file(self, local: str, uri: str) -> str:
        """Copy a finished local file to ``uri`` atomically (rename on local disk, one upload elsewhere)."""
        lp = local_path(uri)
        if lp is not None:
            os.makedirs(os.path.dirname(lp), exist_ok=True)
            tmp = f"{lp}.tmp-{uuid.uuid4().hex[:8]}"
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.replace(tmp, lp)
        else:
            self.fs.put_file(local, self.path(uri))
        return uri

    def open(self, uri: str, mode: str = "rb"):
        if "w" in mode and local_path(uri) is not None:
            os.makedirs(os.path.dirname(local_path(uri)), exist_ok=True)
        return self.fs.open(self.path(uri), mode)

    def ls(self, uri: str, pattern: str = "*") -> list[str]:
        """Sorted URIs matching ``pattern`` in folder ``uri``."""
        found = self.fs.glob(posixpath.join(self.path(uri), pattern))
        return sorted(self.url(p) for p in found)

    def rm(self, uri: str, recursive: bool = True) -> None:
        if self.exists(uri):
            self.fs.rm(self.path(uri), recursive=recursive)

    # -- stages ----------------------------------------------------------------------------------
    def stage_manifest(self, stage_uri: str) -> dict[str, Any]:
        """The ``_SUCCESS`` manifest of a completed stage folder."""
        marker = join(stage_uri, SUCCESS)
        if not self.exists(marker):
            raise StorageError(
                f"stage {stage_uri} is not complete (no {SUCCESS}); fix: run the flow again, which rebuilds it "
                "(if a cached task still skips it, run once with PREFECT_TASKS_REFRESH_CACHE=true)"
            )
        return self.read_json(marker)

    def gone(self, value: Any) -> list[str]:
        """The URIs under this root named in ``value`` (a string, or lists / tuples / dicts of them) that are no
        longer there: a stage folder ``{root}/{stage}/{version}`` that is not complete, or a file inside a stage
        that does not exist. What a cached result may be trusted with: per stage, its marker and one listing
        (every top-level file the marker lists, at its size)."""
        found: list[str] = []

        def visit(v: Any) -> None:
            if isinstance(v, str):
                parts = v[len(self.root) + 1 :].split("/") if v.startswith(self.root + "/") else []
                if len(parts) >= 2 and _VERSION.fullmatch(parts[1]):
                    problem = self._stage_problem(join(self.root, parts[0], parts[1]))
                    if problem is None and len(parts) > 2 and not self.exists(v):
                        problem = v
                    if problem is not None:
                        found.append(problem)
            elif isinstance(v, Mapping):
                for x in v.values():
                    visit(x)
            elif isinstance(v, list | tuple):
                for x in v:
                    visit(x)

        visit(value)
        return found

    def top_files(self, folder_uri: str) -> dict[str, int]:
        """``{name: size}`` of the files directly in a folder (one listing; nothing cached from before)."""
        return {name: size for name, (size, _) in self._listing(folder_uri).items()}

    def _listing(self, folder_uri: str) -> dict[str, tuple[int, str]]:
        """``{name: (size, tag)}`` of the files directly in a folder, ``tag`` being what changes when a file is
        written again (its etag on object stores, its modification time on disks); one listing, nothing cached."""
        path = self.path(folder_uri)
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {
            posixpath.basename(e["name"].rstrip("/")): (int(e["size"]), _tag(e)) for e in entries if e["type"] == "file"
        }

    def digest(self, uri: str) -> str:
        """sha256 of a file's content, read in 8 MiB blocks."""
        h = hashlib.sha256()
        with self.fs.open(self.path(uri), "rb") as f:
            while block := f.read(8 << 20):
                h.update(block)
        return h.hexdigest()

    def _digests(self, stage_uri: str, listing: Mapping[str, tuple[int, str]]) -> dict[str, dict[str, str]]:
        """What ``_SUCCESS`` records beside each top-level file's size so that damage which keeps the size is
        found: its tag (:meth:`_listing`) and, where reading it back is cheap (a local disk, or a file of at most
        ``DIGEST_MAX_BYTES`` on an object store), its sha256. A file whose tag changed is then hashed again and
        compared; without a recorded sha256 (a large object) a changed etag alone marks it replaced."""
        local = local_path(self.root) is not None
        out = {}
        for name, (size, tag) in listing.items():
            out[name] = {"tag": tag}
            if local or size <= DIGEST_MAX_BYTES:
                out[name]["sha256"] = self.digest(join(stage_uri, name))
        return out

    def fingerprint(self, uris: Sequence[str]) -> str:
        """A short hash of what ``uris`` hold, from one listing per folder: each file's name, size and etag (object
        stores) or modification time (disks). A stage's identity includes it, so a shard replaced, truncated or
        restored makes a new stage, at the cost of a listing, not of reading the data."""
        info: dict[str, Any] = {}
        for folder in sorted({u.rsplit("/", 1)[0] for u in uris}):
            path = self.path(folder)
            self.fs.invalidate_cache(path)
            for e in self.fs.ls(path, detail=True):
                tag = e.get("ETag") or e.get("etag") or e.get("mtime") or e.get("LastModified") or e.get("created")
                info[self.url(e["name"])] = [e.get("size"), str(tag)]
        listed = [[u, *info.get(u, [None, "missing"])] for u in uris]
        return hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:16]

    def _stage_problem(self, stage_uri: str) -> str | None:
        """None if the stage is complete and every top-level file its manifest lists is there at its size; else
        the URI of what is missing or damaged (the marker, or the file)."""
        marker = join(stage_uri, SUCCESS)
        try:
            manifest = json.loads(self.fs.cat_file(self.path(marker)))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return marker
        present = self._listing(stage_uri)
        digests = manifest.get("digests") or {}  # stages written before digests were recorded: sizes only
        for name, size in (manifest.get("files") or {}).items():
            found = present.get(name)
            if found is None or found[0] != size:
                return join(stage_uri, name)
            recorded = digests.get(name)
            if recorded is None or recorded.get("tag") == found[1]:
                continue
            uri = join(stage_uri, name)
            key = (uri, found[0], found[1])  # written again since the stage finished: is the content the same?
            if key not in _VERIFIED:
                _VERIFIED[key] = "sha256" in recorded and self.digest(uri) == recorded["sha256"]
            if not _VERIFIED[key]:
                return uri
        return None

    def stage(
        self,
        name: str,
        config: BaseModel | Mapping[str, Any] | None,
        inputs: Mapping[str, str] | None = None,
        schema: int = 1,
    ) -> Stage:
        return Stage(self, name, config, dict(inputs or {}), schema)


@dataclass
class Stage:
    """One stage's versioned folder: ``{root}/{name}/{version}``."""

    storage: Storage
    name: str
    config: BaseModel | Mapping[str, Any] | None
    inputs: dict[str, str]
    schema: int = 1  # the version of the files the stage writes (see version_hash)

    @property
    def version(self) -> str:
        return version_hash(self.config, self.inputs, self.schema)

    @property
    def uri(self) -> str:
        return self.storage.uri(self.name, self.version)

    def file(self, *parts: str) -> str:
        return join(self.uri, *parts)

    @property
    def done(self) -> bool:
        """Complete: the marker is there and so is every top-level file it lists, at the size it was written.
        A stage with a deleted or truncated file (model.pt, an index) is therefore rebuilt by the next run."""
        problem = self.storage._stage_problem(self.uri)
        if problem is not None and not problem.endswith("/" + SUCCESS) and problem not in _WARNED:
            _WARNED.add(problem)  # once per process: several callers ask before the stage is rebuilt
            _logger.warning(
                "stage %s: %s is missing, or not the size or content it was written with (damaged); "
                "building the stage again",
                self.uri,
                problem,
            )
        return problem is None

    def manifest(self) -> dict[str, Any]:
        return self.storage.read_json(self.file(SUCCESS))

    def clear(self) -> None:
        """Remove leftovers of an interrupted attempt (no marker) before writing again."""
        if not self.done:
            self.storage.rm(self.uri)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this stage's build lock: a second process building the same stage on the same root waits, then
        finds it done and adopts it, instead of writing over the first (img2dataset's ``_tmp`` folder deleted
        under the other run, a half-written folder cleared).

        Local roots: an ``flock`` on ``{root}/.locks/{stage}-{version}.lock`` (released by the kernel when the
        process dies, so a killed run never leaves it held). Object stores have no lock primitive in fsspec;
        there each object is written whole by one PUT and a stage's files are the same whoever writes them,
        so two writers end with the same complete stage.
        """
        root = local_path(self.storage.root)
        if root is None:
            yield
            return
        path = os.path.join(root, ".locks", f"{self.name}-{self.version}.lock")
        with _THREAD_LOCKS_GUARD:
            in_process = _THREAD_LOCKS.setdefault(path, threading.RLock())
        with in_process:  # other threads of this process wait here; this thread may re-enter (finish in embed)
            if _HELD.get(path):
                _HELD[path] += 1
                try:
                    yield
                finally:
                    _HELD[path] -= 1
                return
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as exc:  # an unwritable root: the stage's first write fails with the clear message
                _logger.debug("no lock for %s: %s", self.uri, exc)
                yield
                return
            waiting = f"stage {self.uri} is being built by another run on this root; waiting for it"
            with file_lock(path, waiting):
                _HELD[path] = 1
                try:
                    yield
                finally:
                    _HELD[path] = 0

    def complete(self, counts: Mapping[str, Any] | None = None, **extra: Any) -> str:
        """Write the ``_SUCCESS`` marker last; returns the stage URI."""
        cfg = self.config.model_dump(mode="json") if isinstance(self.config, BaseModel) else self.config
        # The top-level files and their sizes: what a cache may check cheaply (one listing) before trusting
        # the stage (Storage.gone); subfolders (shards, checkpoints) are read with checks of their own.
        listing = {k: v for k, v in self.storage._listing(self.uri).items() if k != SUCCESS}
        files = {k: size for k, (size, _) in listing.items()}
        self.storage.write_json(
            self.file(SUCCESS),
            {
                "stage": self.name,
                "version": self.version,
                "schema": self.schema,
                "counts": dict(counts or {}),
                "config": cfg,
                "inputs": self.inputs,
                "files": files,
                "digests": self.storage._digests(self.uri, listing),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **extra,
            },
        )
        return self.uri


@contextlib.contextmanager
def file_lock(path: str, waiting: str | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if need be; its folder must exist) for the block's duration,
    across processes of this host. The kernel releases it when the process dies, so a killed run never leaves it
    held. ``waiting``: a warning logged when another process holds it and this one waits."""
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                _logger.warning("%s", waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
