"""Shared storage of a search (``--storage PATH_OR_URI``): where Tune's experiment and a copy of the run folder live.

On one machine a search keeps everything in its run folder (``runs/<name>/``). On a cluster, Tune's trials run on
other nodes and write their checkpoints where every node can reach them: with ``--storage``, Tune's experiment
(its state and every trial's folder and checkpoints) goes to ``<storage>/<name>/tune``, written by the nodes
themselves through pyarrow's filesystems (a shared path such as an NFS mount, or any URI pyarrow opens:
``s3://``, ``gs://``, ``hdfs://``, ``file://``).

The driver still writes its run folder locally (``run.json``, the Optuna study, ``results/``, the report) and
copies it to ``<storage>/<name>/`` every :data:`PUSH_PERIOD_S` seconds and at the end (:class:`RunMirror`), so a
search whose driver machine is gone resumes on another one: ``--resume NAME --storage URI`` fetches the copy
first (:func:`pull_run`). Before Tune restores, :func:`pull_state` brings the experiment's state files (not the
checkpoints) into ``runs/<name>/tune``, the resume repairs them there as it does for a local search, and
:func:`push_state` puts them back.

Everything goes through ``pyarrow.fs``, a plain path included, so the tests of a local folder or a ``file://``
URI exercise the code an ``s3://`` bucket runs.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from sde_search.preflight import redacted
from sde_search.runfolder import RESULTS, RunInfo

log = logging.getLogger(__name__)

EXPERIMENT = "tune"
"""Tune's experiment folder, under ``<storage>/<name>/`` (or under the run folder without storage)."""

NOT_COPIED = frozenset({EXPERIMENT, "heartbeats", "ray_processes.json", "ray.log", "optuna.db-journal"})
"""Run-folder entries the copy to storage leaves out: Tune's own folder is written there directly; the rest only
means something on the driver's machine."""

STATE_FILES = ("tuner.pkl", "experiment_state-", "searcher-state-", "search_gen_state-")
"""Names (or name prefixes) of the experiment's state files, the ones a resume reads and repairs."""

PUSH_PERIOD_S = 30.0
"""Seconds between two copies of the run folder to storage while the search runs (a copy is about 1-3 MB)."""


def resolve(given: str) -> str:
    """The storage as Tune is given it: a URI as it is, a local path made absolute; no trailing slash."""
    if "://" in given:
        return given.rstrip("/")
    return str(Path(given).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URI; a URI's query (``?endpoint_override=...``) stays at the end."""
    where, query = base.split("?", 1) if "://" in base and "?" in base else (base, "")
    return "/".join([where.rstrip("/"), *parts]) + (f"?{query}" if query else "")


def experiment_uri(info: RunInfo) -> str:
    """Where the search's Tune experiment is: ``<storage>/<name>/tune``, else ``<run folder>/tune``."""
    return join(run_uri(info), EXPERIMENT)


def run_uri(info: RunInfo) -> str:
    """The folder that holds the experiment (Tune's ``storage_path``): ``<storage>/<name>``, else the run folder."""
    return join(info.storage, info.name) if info.storage else str(Path(info.run_dir))


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))


def exists(uri: str) -> bool:
    """Whether anything (a file or a folder) is at ``uri``."""
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


Copied = dict[str, tuple[object, ...]]
"""What an earlier copy sent: source path -> the file's size and modification time (ns) then."""


def _copy_tree(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str, *,
               skip: Any = lambda rel: False, copied: Copied | None = None) -> int:
    """Copies the files under ``src`` to ``dst``, folders made as needed; returns the number of files copied.

    File by file, leaving out those ``skip(relative path)`` refuses, so that a skipped folder costs nothing.
    With ``copied``, a file whose size and modification time are those it had at its last copy is left out too,
    and each file copied is noted there. The source's own record is used rather than the destination's times,
    which a bucket sets to its upload time on its own clock.
    """
    found = src_fs.get_file_info(pafs.FileSelector(src, recursive=True, allow_not_found=True))
    n = 0
    for info in found:
        rel = info.path[len(src.rstrip("/")) + 1:]
        if info.type != pafs.FileType.File or skip(rel):
            continue
        stamp = (info.size, info.mtime_ns)
        if copied is not None and copied.get(info.path) == stamp:
            continue
        target = f"{dst.rstrip('/')}/{rel}"
        dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(info.path, target, source_filesystem=src_fs, destination_filesystem=dst_fs)
        if copied is not None:
            copied[info.path] = stamp
        n += 1
    return n


def _move_dir(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Moves a folder within one filesystem (its parent made first).

    Object stores have no folders to rename: pyarrow's S3 ``move`` copies one key and refuses a "folder" (a key
    prefix) with NO_SUCH_KEY, so there the files are copied one by one and the source deleted after.
    """
    fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    try:
        fs.move(src, dst)
    except OSError:
        _copy_tree(fs, src, fs, dst)
        fs.delete_dir(src)


# ---------------------------------------------------------------- the run folder's copy


def push_run(info: RunInfo, copied: Copied | None = None) -> int:
    """Copies the run folder (but Tune's experiment, which is on the storage already) to ``<storage>/<name>/``.

    In the order a resume needs to find the copies consistent: first the kept Tune snapshot (``state/``), then the
    Optuna study (through SQLite's backup, consistent while the search writes to it), then the trials' result
    logs, then the rest; each is at least as new as the one before, as in the run folder itself.
    With ``copied`` (kept from one copy to the next), only the files that changed since are sent.
    Returns the number of files copied.
    """
    run_dir = Path(info.run_dir)
    local = pafs.LocalFileSystem()
    dst_fs, dst = _fs(run_uri(info))
    dst_fs.create_dir(dst, recursive=True)
    n = _copy_tree(local, str(run_dir / "state"), dst_fs, f"{dst}/state", copied=copied)
    db = run_dir / "optuna.db"
    # the study's stamp: the database and, if SQLite keeps one, its write-ahead log (where writes land first)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in (db, run_dir / "optuna.db-wal") if p.exists())
    if db.exists() and (copied is None or copied.get(str(db)) != stamp):
        with tempfile.TemporaryDirectory(prefix="sde-push-") as tmp:
            copy = Path(tmp, "optuna.db")
            with contextlib.closing(sqlite3.connect(db)) as source, contextlib.closing(sqlite3.connect(copy)) as out:
                source.backup(out)
            pafs.copy_files(str(copy), f"{dst}/optuna.db", source_filesystem=local, destination_filesystem=dst_fs)
        if copied is not None:
            copied[str(db)] = stamp
        n += 1
    n += _copy_tree(local, str(run_dir / RESULTS), dst_fs, f"{dst}/{RESULTS}", copied=copied)
    return n + _copy_tree(local, str(run_dir), dst_fs, dst,
                          skip=lambda rel: rel.split("/")[0] in NOT_COPIED | {"state", RESULTS, "discarded"}
                          or rel.startswith("optuna.db") or rel.split("/")[-1].startswith("."), copied=copied)


def pull_run(storage: str, name: str, run_dir: Path) -> int:
    """Fetches the run folder's copy ``<storage>/<name>/`` (without Tune's experiment) into ``run_dir``.

    Returns the number of files fetched (0: storage has no such run).
    """
    src_fs, src = _fs(join(storage, name))
    if src_fs.get_file_info(f"{src}/run.json").type != pafs.FileType.File:
        return 0
    return _copy_tree(src_fs, src, pafs.LocalFileSystem(), str(run_dir),
                      skip=lambda rel: rel.split("/")[0] == EXPERIMENT)


class RunMirror(tune.Callback):
    """Copies the run folder to the storage every :data:`PUSH_PERIOD_S` seconds and when the experiment ends.

    The periodic copies send only the files that changed since the last one; the copy at the end sends them all,
    so that the storage's copy is whole even if something there was lost in between. A copy that fails (storage
    unreachable for a moment) is logged and tried again at the next period; the search goes on, its run folder
    on the driver is complete.
    """

    def __init__(self, info: RunInfo):
        """Copies ``info``'s run folder to ``info.storage``."""
        self.info = info
        self.pushed = 0.0
        self.copied: Copied = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with Tune's experiment state: a restored mirror sends everything again at its first copy."""
        return {**self.__dict__, "copied": {}}

    def relocate(self, info: RunInfo) -> None:
        """Copies ``info``'s run folder from now on (a restored search's folder may be elsewhere than at its start)."""
        self.info, self.copied = info, {}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:  # noqa: D102
        if time.monotonic() - self.pushed >= PUSH_PERIOD_S:
            self.push(changed_only=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:  # noqa: D102
        self.push()

    def push(self, changed_only: bool = False) -> int:
        """One copy now, of every file or (``changed_only``) of those changed since the last; failures logged.

        Returns the number of files copied (0 when the copy failed).
        """
        self.pushed = time.monotonic()
        try:
            return push_run(self.info, self.copied if changed_only else None)
        except (OSError, sqlite3.Error) as exc:
            log.warning("warning: copying the run folder to %s failed (%s); trying again in %.0f s",
                        redacted(self.info.storage), redacted(str(exc)[:200]), PUSH_PERIOD_S)
            return 0


def fetch_checkpoint(info: RunInfo, recorded: str, into: Path) -> Path | None:
    """A trial's checkpoint that Tune recorded on the storage, copied into a folder under ``into``.

    Tune records a checkpoint by its path inside the storage's filesystem (``bucket/prefix/<name>/tune/<trial>/
    checkpoint_000009`` for a bucket), which no local tool can open; it is found again under the run's experiment
    on ``info.storage``. Returns the local folder, or None when the run has no storage or the checkpoint is not
    there.
    """
    marker = f"/{info.name}/{EXPERIMENT}/"
    if not info.storage or marker not in "/" + recorded.lstrip("/"):
        return None
    rel = ("/" + recorded.lstrip("/")).rsplit(marker, 1)[1].strip("/")
    src_fs, src = _fs(join(experiment_uri(info), rel))
    if src_fs.get_file_info(src).type != pafs.FileType.Directory:
        return None
    local = into / rel.replace("/", "--")
    _copy_tree(src_fs, src, pafs.LocalFileSystem(), str(local))
    return local


# ---------------------------------------------------------------- Tune's state, for a resume


def _is_state(rel: str) -> bool:
    """A state file of the experiment, or a trial's ``result.json`` (what a resume reads; never a checkpoint)."""
    parts = rel.split("/")
    if len(parts) == 1:
        return parts[0].startswith(STATE_FILES)
    return len(parts) == 2 and parts[1] == "result.json"


def pull_state(info: RunInfo) -> Path:
    """Fetches the experiment's state files and trial results into ``<run>/tune`` (emptied first); returns it.

    Each trial's folder is made, with its ``result.json`` when it has one: the resume reads which folders exist.
    """
    local_dir = Path(info.run_dir) / EXPERIMENT
    with contextlib.suppress(FileNotFoundError):
        for old in sorted(local_dir.rglob("*"), reverse=True):
            old.rmdir() if old.is_dir() else old.unlink()
    local_dir.mkdir(exist_ok=True)
    src_fs, src = _fs(experiment_uri(info))
    for entry in src_fs.get_file_info(pafs.FileSelector(src, allow_not_found=True)):
        if entry.type == pafs.FileType.Directory:
            (local_dir / entry.base_name).mkdir(exist_ok=True)
    _copy_tree(src_fs, src, pafs.LocalFileSystem(), str(local_dir), skip=lambda rel: not _is_state(rel))
    return local_dir


def push_state(info: RunInfo, moved_to: str = "orphans") -> None:
    """Puts the repaired state of ``<run>/tune`` back on the storage.

    State files the repair removed are removed there too (Tune would read the newest one); a trial folder the
    repair moved out of the experiment moves on the storage to ``<storage>/<name>/<moved_to>/``.
    """
    local_dir = Path(info.run_dir) / EXPERIMENT
    dst_fs, dst = _fs(experiment_uri(info))
    for entry in dst_fs.get_file_info(pafs.FileSelector(dst, allow_not_found=True)):
        gone = not (local_dir / entry.base_name).exists()
        if entry.type == pafs.FileType.File and _is_state(entry.base_name) and gone:
            dst_fs.delete_file(entry.path)
        elif entry.type == pafs.FileType.Directory and gone:
            _move_dir(dst_fs, entry.path, f"{dst.rsplit('/', 1)[0]}/{moved_to}/{entry.base_name}")
    _copy_tree(pafs.LocalFileSystem(), str(local_dir), dst_fs, dst, skip=lambda rel: not _is_state(rel))


def discard_experiment(info: RunInfo) -> None:
    """Moves ``<storage>/<name>/tune`` to ``<storage>/<name>/discarded/<time>/tune``.

    A search killed before Tune saved a usable state starts again; nothing is deleted.
    """
    fs, path = _fs(experiment_uri(info))
    _move_dir(fs, path, f"{path.rsplit('/', 1)[0]}/discarded/{time.strftime('%Y%m%d-%H%M%S')}/{EXPERIMENT}")
