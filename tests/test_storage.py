"""Shared storage (``--storage``): the run folder's copy, Tune's state for a resume, and the checks before a search.

Every function goes through pyarrow's filesystems: a plain folder, a ``file://`` URI and an S3 bucket (moto's
server on 127.0.0.1, reached over HTTP as any S3-compatible store) are tested.
"""

import json
import pickle
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from s3bucket import moto_bucket

from sde_search import preflight, storage
from sde_search.config import ConfigError
from sde_search.runfolder import RunInfo

ROOT = Path(__file__).resolve().parents[1]


def _info(run_dir: Path, shared: str, name: str = "r1") -> RunInfo:
    return RunInfo(name=name, run_dir=str(run_dir), task_path="t.yaml", space_path="s.yaml",
                   tracking_uri="sqlite:///x.db", experiment="e", parent_run_id="p", study_name="sde-r1",
                   storage=shared)


def _run_folder(run_dir: Path) -> None:
    (run_dir / "results").mkdir(parents=True)
    (run_dir / "results" / "a.jsonl").write_text('{"report": 1}\n')
    (run_dir / "state" / "gen-1").mkdir(parents=True)
    (run_dir / "state" / "gen-1" / "experiment_state-1.json").write_text("{}")
    (run_dir / "state" / "LATEST").write_text("gen-1")
    (run_dir / "run.json").write_text('{"name": "r1"}')
    (run_dir / "report.md").write_text("# report")
    (run_dir / "ray.log").write_text("driver only")
    (run_dir / "heartbeats").mkdir()
    (run_dir / "heartbeats" / "a.json").write_text("{}")
    (run_dir / "tune" / "trainable_a").mkdir(parents=True)
    (run_dir / "tune" / "trainable_a" / "result.json").write_text("{}")
    (run_dir / ".summary.json.tmp").write_text("half")
    with sqlite3.connect(run_dir / "optuna.db") as db:
        db.execute("create table trials (n int)")
        db.execute("insert into trials values (7)")


def _shared(tmp_path: Path, kind: str) -> tuple[str, Path]:
    folder = tmp_path / "shared"
    return (folder.as_uri() if kind == "uri" else str(folder)), folder


@pytest.mark.parametrize("kind", ["path", "uri"])
def test_the_run_folder_goes_to_storage_and_comes_back(tmp_path, kind):
    shared, folder = _shared(tmp_path, kind)
    run_dir = tmp_path / "runs" / "r1"
    _run_folder(run_dir)
    pushed = storage.push_run(_info(run_dir, shared))
    copy = folder / "r1"
    got = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert got == ["optuna.db", "report.md", "results/a.jsonl", "run.json", "state/LATEST",
                   "state/gen-1/experiment_state-1.json"]  # not tune/ (Tune writes it there), not driver-only files
    assert pushed == len(got)
    with sqlite3.connect(copy / "optuna.db") as db:
        assert db.execute("select n from trials").fetchall() == [(7,)]
    elsewhere = tmp_path / "other-driver" / "r1"
    assert storage.pull_run(shared, "r1", elsewhere) == len(got)
    assert (elsewhere / "report.md").read_text() == "# report" and (elsewhere / "state" / "LATEST").exists()
    assert storage.pull_run(shared, "nope", tmp_path / "x") == 0 and not (tmp_path / "x").exists()


def test_a_copy_that_fails_is_logged_and_the_search_goes_on(tmp_path, caplog):
    run_dir = tmp_path / "r1"
    _run_folder(run_dir)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    mirror = storage.RunMirror(_info(run_dir, str(blocker)))
    mirror.push()
    assert "copying the run folder" in caplog.text
    mirror.relocate(_info(run_dir, str(tmp_path / "ok")))
    mirror.on_experiment_end([])
    assert (tmp_path / "ok" / "r1" / "run.json").exists()


def test_the_periodic_copy_sends_only_what_changed_and_the_last_one_everything(tmp_path):
    run_dir = tmp_path / "r1"
    _run_folder(run_dir)
    shared = tmp_path / "shared"
    mirror = storage.RunMirror(_info(run_dir, str(shared)))
    assert mirror.push(changed_only=True) == 6  # the first copy: every file
    assert mirror.push(changed_only=True) == 0  # nothing changed
    (run_dir / "results" / "a.jsonl").write_text('{"report": 1}\n{"report": 2}\n')
    with sqlite3.connect(run_dir / "optuna.db") as db:
        db.execute("insert into trials values (8)")
    assert mirror.push(changed_only=True) == 2  # the grown result log and the study
    assert (shared / "r1" / "results" / "a.jsonl").read_text().count("report") == 2
    with sqlite3.connect(shared / "r1" / "optuna.db") as db:
        assert db.execute("select n from trials order by n").fetchall() == [(7,), (8,)]
    (shared / "r1" / "report.md").unlink()  # lost on the storage: the copy at the end sends everything again
    mirror.on_experiment_end([])
    assert (shared / "r1" / "report.md").read_text() == "# report"
    restored = pickle.loads(pickle.dumps(mirror))  # as Tune saves and restores its callbacks
    assert restored.copied == {} and restored.push(changed_only=True) == 6


def test_robust_fetches_a_checkpoint_recorded_inside_a_bucket(tmp_path):
    shared = tmp_path / "bucket"
    ckpt = shared / "prefix" / "r1" / "tune" / "trainable_a" / "checkpoint_000011"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter.bin").write_text("weights")
    info = _info(tmp_path / "runs" / "r1", (shared / "prefix").as_uri())
    recorded = "bkt/prefix/r1/tune/trainable_a/checkpoint_000011"  # how Tune records a checkpoint on s3://bkt/prefix
    got = storage.fetch_checkpoint(info, recorded, tmp_path / "fetched")
    assert got is not None and (got / "adapter.bin").read_text() == "weights"
    assert storage.fetch_checkpoint(info, recorded.replace("_000011", "_000099"), tmp_path / "f2") is None
    assert storage.fetch_checkpoint(info, "/elsewhere/r2/tune/x/checkpoint_000001", tmp_path / "f3") is None
    assert storage.fetch_checkpoint(_info(tmp_path, ""), recorded, tmp_path / "f4") is None  # no storage

    from sde_search import robust
    from sde_search.design import ES_SDE
    trials = tmp_path / "trials.json"
    row = {"trial_id": "a", "design": ES_SDE.to_params(), "hparams": {}, "status": "full",
           "metrics": {"score": 0.5, "report": 12}, "checkpoint": recorded}
    trials.write_text(json.dumps([row]))
    with pytest.raises(ConfigError, match="checkpoints of the top trials are gone"):
        robust.top_trials(trials, 1)  # without the storage: not on this disk
    chosen = robust.top_trials(trials, 1, fetch=lambda p: storage.fetch_checkpoint(info, p, tmp_path / "f5"))
    assert (Path(str(chosen[0].checkpoint)) / "adapter.bin").exists()


def test_a_uri_query_stays_at_the_end_and_secrets_are_never_shown():
    uri = "s3://bkt/sde?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(uri, "r1", "tune") == "s3://bkt/sde/r1/tune?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join("/shared/sde", "r1") == "/shared/sde/r1"
    info = _info(Path("/runs/r1"), uri)
    assert storage.run_uri(info) == "s3://bkt/sde/r1?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.run_uri(_info(Path("/runs/r1"), "")) == "/runs/r1"
    assert preflight.redacted("s3://AKIA:SECRET@bkt/p") == "s3://AKIA:***@bkt/p"
    shown = preflight.redacted("s3://bkt/p?access_key=A1&secret_key=S1&session_token=T1&region=eu&scheme=http")
    assert shown == "s3://bkt/p?access_key=***&secret_key=***&session_token=***&region=eu&scheme=http"
    assert preflight.redacted("/plain/path") == "/plain/path"
    problems = preflight.storage_problems("nosuchfs://user:hunter2@host/x?secret_key=hunter2")
    assert len(problems) == 1 and "hunter2" not in problems[0] and "***" in problems[0]


def _experiment(root: Path) -> None:
    root.mkdir(parents=True)
    for name in ("tuner.pkl", "experiment_state-2.json", "searcher-state-2.pkl", "search_gen_state-2.json"):
        (root / name).write_text(name)
    (root / "trainable_a" / "checkpoint_000000").mkdir(parents=True)
    (root / "trainable_a" / "checkpoint_000000" / "adapter.bin").write_text("weights")
    (root / "trainable_a" / "result.json").write_text('{"report": 1}\n')
    (root / "trainable_b").mkdir()
    (root / "trainable_b" / "params.json").write_text("{}")


@pytest.mark.parametrize("kind", ["path", "uri"])
def test_a_resume_repairs_the_state_here_and_puts_it_back(tmp_path, kind):
    shared, folder = _shared(tmp_path, kind)
    experiment = folder / "r1" / "tune"
    _experiment(experiment)
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "tune" / "stale").mkdir(parents=True)  # an older mirror is replaced, not merged
    info = _info(run_dir, shared)
    assert storage.experiment_uri(info) == f"{shared}/r1/tune" and storage.exists(storage.experiment_uri(info))
    local = storage.pull_state(info)
    got = sorted(str(p.relative_to(local)) for p in local.rglob("*"))
    assert got == ["experiment_state-2.json", "search_gen_state-2.json", "searcher-state-2.pkl", "trainable_a",
                   "trainable_a/result.json", "trainable_b", "tuner.pkl"]  # no checkpoint comes down
    # the repair: an older kept snapshot replaces the newest state, a result is completed, a folder set aside
    (local / "experiment_state-2.json").unlink()
    (local / "experiment_state-1.json").write_text("kept")
    (local / "trainable_a" / "result.json").write_text('{"report": 1}\n{"report": 2}\n')
    (local / "trainable_b").rmdir() if not any((local / "trainable_b").iterdir()) else None
    storage.push_state(info)
    assert not (experiment / "experiment_state-2.json").exists()  # Tune would have restored the newest
    assert (experiment / "experiment_state-1.json").read_text() == "kept"
    assert (experiment / "trainable_a" / "result.json").read_text().count("report") == 2
    assert (experiment / "trainable_a" / "checkpoint_000000" / "adapter.bin").read_text() == "weights"
    assert not (experiment / "trainable_b").exists() and (folder / "r1" / "orphans" / "trainable_b").is_dir()
    storage.discard_experiment(info)
    assert not experiment.exists() and list((folder / "r1" / "discarded").glob("*/tune/tuner.pkl"))


def test_storage_problems_name_what_is_allowed(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert preflight.storage_problems(str(tmp_path / "new" / "folder")) == []
    assert preflight.storage_problems(tmp_path.as_uri()) == []
    assert "is a file, not a folder" in preflight.storage_problems(str(blocker / "sub"))[0]
    bogus = preflight.storage_problems("bogus://bucket/x")
    assert len(bogus) == 1 and "pyarrow cannot open it" in bogus[0] and "s3://" in bogus[0]
    assert "empty" in preflight.storage_problems(" ")[0]


def test_run_json_without_storage_loads_and_names_the_folder_read(tmp_path):
    run_dir = tmp_path / "moved"
    run_dir.mkdir()
    old = {k: v for k, v in _info(tmp_path / "elsewhere", "").__dict__.items() if k != "storage"}
    (run_dir / "run.json").write_text(json.dumps({**old, "overrides": []}))
    info = RunInfo.load(run_dir)
    assert info.storage == "" and info.run_dir == str(run_dir)  # a folder fetched or moved: where it is now
    assert storage.experiment_uri(info) == str(run_dir / "tune")


def test_resume_fetches_a_run_missing_here_from_the_storage(tmp_path):
    search = pytest.importorskip("sde_search.search")
    shared, _ = _shared(tmp_path, "uri")
    run_dir = tmp_path / "a" / "r1"
    _run_folder(run_dir)
    storage.push_run(_info(run_dir, shared))
    runs = tmp_path / "b"
    task = SimpleNamespace(config=SimpleNamespace(name="t"))
    assert search._find_run(runs, "r1", task, shared) == runs / "r1"
    assert (runs / "r1" / "run.json").exists() and (runs / "r1" / "optuna.db").exists()
    with pytest.raises(ConfigError, match=r"no run at .*nor at file://"):
        search._find_run(runs, "r2", task, shared)
    with pytest.raises(ConfigError, match="a run name is letters"):
        search._find_run(runs, "../x", task, shared)


def test_a_bad_storage_is_one_line_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "sde_search.cli", "--task", str(ROOT / "examples" / "demo_masa.yaml"), "--check"]
    proc = subprocess.run([*cmd, "--storage", "bogus://b/x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --storage bogus://b/x: pyarrow cannot open it"), lines
    proc = subprocess.run([*cmd, "--set", "tracking.storage=bogus://b/x"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "tracking.storage: bogus://b/x: pyarrow cannot open it" in proc.stderr


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with moto_bucket() as uri:
        yield uri


def test_an_s3_bucket_holds_the_copy_the_state_and_the_checkpoints(tmp_path, s3, caplog):
    import pyarrow.fs as pafs

    assert preflight.storage_problems(s3) == []
    run_dir = tmp_path / "runs" / "r1"
    _run_folder(run_dir)
    info = _info(run_dir, s3)
    mirror = storage.RunMirror(info)
    assert mirror.push(changed_only=True) == 6 and mirror.push(changed_only=True) == 0
    elsewhere = tmp_path / "other-driver" / "r1"
    assert storage.pull_run(s3, "r1", elsewhere) == 6
    with sqlite3.connect(elsewhere / "optuna.db") as db:
        assert db.execute("select n from trials").fetchall() == [(7,)]
    # Tune's experiment in the bucket: the resume's state round trip, and a checkpoint robust fetches
    fs, root = pafs.FileSystem.from_uri(storage.experiment_uri(info))
    for rel, text in [("tuner.pkl", "t"), ("experiment_state-2.json", "{}"), ("trainable_a/result.json", "{}"),
                      ("trainable_a/checkpoint_000001/adapter.bin", "weights"), ("trainable_b/params.json", "{}")]:
        fs.create_dir(f"{root}/{rel}".rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(f"{root}/{rel}") as out:
            out.write(text.encode())
    local = storage.pull_state(info)
    assert sorted(p.name for p in local.iterdir()) == ["experiment_state-2.json", "trainable_a", "trainable_b",
                                                       "tuner.pkl"]
    assert not (local / "trainable_a" / "checkpoint_000001").exists()  # state only, never a checkpoint
    shutil.rmtree(local / "trainable_b")  # a repair moved it out
    storage.push_state(info)
    assert fs.get_file_info(f"{root}/trainable_b").type == pafs.FileType.NotFound
    assert fs.get_file_info(f"{root.rsplit('/', 1)[0]}/orphans/trainable_b/params.json").type == pafs.FileType.File
    got = storage.fetch_checkpoint(info, f"{root}/trainable_a/checkpoint_000001", tmp_path / "robust")
    assert got is not None and (got / "adapter.bin").read_text() == "weights"
    storage.discard_experiment(info)  # a search killed before Tune saved a usable state: set aside, not deleted
    assert not storage.exists(storage.experiment_uri(info))
    kept = fs.get_file_info(pafs.FileSelector(f"{root.rsplit('/', 1)[0]}/discarded", recursive=True))
    assert sum(i.path.endswith("/tune/trainable_a/checkpoint_000001/adapter.bin") for i in kept) == 1
    # the credentials in the URI never reach a message
    broken = storage.RunMirror(_info(run_dir, s3.replace("sde-bucket", "no-such-bucket")))
    assert broken.push() == 0 and "copying the run folder" in caplog.text
    assert "testing:***@" in caplog.text and "testing:testing" not in caplog.text
