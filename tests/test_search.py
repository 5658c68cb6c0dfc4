"""Integration: a small real search (Ray Tune + OptunaSearch + ASHA + MLflow), then a SIGKILL and --resume."""

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MACHINERY, NO_SEED_STAGE, search_cmd, search_env
from s3bucket import moto_bucket

from sde_search import preflight, storage
from sde_search.runfolder import RunInfo

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _cmd(runs: Path, *extra: str) -> list[str]:
    """The small search with a quarter of its training records: what these tests check holds whatever trials learn."""
    return search_cmd(runs, *MACHINERY, *extra)


def _env(tmp_path: Path) -> dict[str, str]:
    return search_env(tmp_path)


def _mlflow_runs(runs: Path, parent_name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("masa_fixed")
    parent = client.search_runs([exp.experiment_id], f"attributes.run_name = '{parent_name}'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                  "and tags.`sde.kind` = 'trial'")
    return client, parent, children


def _check_invariants(runs: Path, name: str, n_trials: int):
    run_dir = runs / name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "report.md").exists() and summary["headline"]
    # a winner (and best_design.yaml) only when some design of the seed stage measured anything on eval
    assert (run_dir / "best_design.yaml").exists() == bool(summary["winner_design"])
    client, parent, children = _mlflow_runs(runs, name)
    assert parent.info.status == "FINISHED"
    names = [c.data.tags["trial_name"] for c in children]
    assert len(names) == len(set(names)) == n_trials, names  # one run per trial, no duplicates
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children)  # nothing left RUNNING
    for c in children:
        history = client.get_metric_history(c.info.run_id, "score")
        assert len(history) >= 1 and len({m.step for m in history}) == len(history)
        assert "format_error_rate" in c.data.metrics
        # named by design, Tune's id in a tag, only the project's metrics (docs/mlflow.md), step = report number
        assert c.info.run_name.split(" ")[0] == c.data.tags["design"]
        assert c.data.tags["trial_name"] == f"trainable_{c.data.tags['sde.trial_id']}"
        assert "optimizer_step" in c.data.metrics and not {"step", "pid", "done", "timestamp",
                                                            "training_iteration"} & set(c.data.metrics)
        assert sorted(m.step for m in history) == sorted(int(m.value) for m in
                                                         client.get_metric_history(c.info.run_id, "report"))
        # No-inst prompts name no slots, so they get no OOD score when the OOD slots differ
        assert ("score_ood" in c.data.metrics) != c.data.tags["design"].startswith("none/")
    designs = {c.data.tags.get("design") for c in children}
    assert "first/exclude/lines/placeholder/text/none" in designs  # ES-SDE enqueued first
    assert "last/exclude/natural/placeholder/text/none" in designs  # the paper's baseline
    best = [c for c in children if c.data.tags.get("best") == "true"]
    assert len(best) == (1 if summary["winner"] else 0) and all(c.data.tags["budget"] == "full" for c in best)
    with sqlite3.connect(run_dir / "optuna.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == n_trials
    return children


def test_search_end_to_end(small_search):
    runs, proc = small_search
    assert "Leaderboard" in proc.stdout and "## Seed stage" in proc.stdout
    children = _check_invariants(runs, "it", 6)
    budgets = [c.data.tags["budget"] for c in children]
    assert "stopped" in budgets, budgets  # ASHA stopped at least one trial early
    stopped = [c for c in children if c.data.tags["budget"] == "stopped"]
    assert all(c.data.metrics["progress"] < 1 for c in stopped)
    designs = [c.data.tags["design"] for c in children]
    assert len(set(designs)) == len(designs), designs  # DistinctSampler: no design trained twice
    with sqlite3.connect(runs / "it" / "optuna.db") as db:
        pruned = db.execute("select count(*) from trials where state = 'PRUNED'").fetchone()[0]
    assert pruned == len(stopped)  # Optuna sees ASHA-stopped trials as pruned, not as final scores
    rows = {r["trial_id"]: r for r in json.loads((runs / "it" / "trials.json").read_text())}
    with sqlite3.connect(runs / "it" / "optuna.db") as db:
        last_steps = db.execute(
            "select a.value_json, max(v.step) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
            "join trial_intermediate_values v on v.trial_id = t.trial_id where t.state = 'PRUNED' "
            "and a.key = 'tune_trial_id' group by t.trial_id").fetchall()
    assert len(last_steps) == len(stopped)
    for tune_id, step in last_steps:  # the value ASHA stopped it on reached Optuna, not only the one before
        assert step == max(h["report"] for h in rows[json.loads(tune_id)]["history"]), (tune_id, step)


# SIGKILL at random moments (evaluation among them): test_resume_kills.py; here the two fixed moments it cannot aim at
KILLS = [("SIGINT", "hang_eval"), ("SIGKILL", "hang_ckpt")]


@pytest.mark.parametrize(("sig", "moment"), KILLS, ids=[f"{s}-{m}" for s, m in KILLS])
def test_killed_driver_then_resume(tmp_path, sig, moment):
    """The driver alone gets SIGINT / SIGKILL while a trial evaluates or writes a checkpoint; --resume finishes.

    SIGKILL leaves Ray's own processes (GCS, raylet, workers) alive: the resume must stop them, found through the PIDs
    this run recorded, and the search must end with every invariant.

    The SIGINT search keeps Tune's experiment on shared storage, an S3 bucket (moto's server on 127.0.0.1), and its
    driver's run folder is deleted before the resume, as when the driver machine is gone: the resume, given only the
    run's name and the storage, fetches the folder's copy from the bucket, trains with the ``--set`` the search
    started with, and restores Tune from there.
    """
    with contextlib.ExitStack() as stack:
        shared = stack.enter_context(moto_bucket()) if sig == "SIGINT" else ""
        _killed_then_resumed(tmp_path, sig, moment, shared)


def _killed_then_resumed(tmp_path: Path, sig: str, moment: str, shared: str) -> None:
    runs, mark = tmp_path / "runs", tmp_path / "hanging"
    small = ["--set", "space.budget.num_samples=4", "--set", "train.epochs=2", "--set", "train.reports_per_epoch=2",
             "--set", "space.budget.seeds=1", "--set", "space.budget.seed_top=0",
             *(["--storage", shared] if shared else [])]
    env = {**_env(tmp_path), "SDE_FAULT": f"{moment}@2:instruction=first", "SDE_FAULT_MARK": str(mark)}
    proc = subprocess.Popen(_cmd(runs, "--name", "killed", *small), cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 400
    while not mark.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert mark.exists(), proc.stdout.read()[-3000:] if proc.poll() is not None else "the fault never fired"
    ray_pids = json.loads((runs / "killed" / "ray_processes.json").read_text())
    os.kill(proc.pid, getattr(signal, sig))  # the driver only, as a user's kill or Ctrl-C would
    out = proc.communicate(timeout=120)[0]
    if sig == "SIGINT":
        assert proc.returncode == 130, out[-3000:]
        assert "interrupted after" in out and "--resume killed" in out
    _, parent, _ = _mlflow_runs(runs, "killed")
    assert parent.info.status != "FINISHED"
    if sig == "SIGINT":
        import pyarrow.fs as pafs

        assert not (runs / "killed" / "tune").exists()  # Tune's experiment went to the storage
        fs, tune_dir = pafs.FileSystem.from_uri(storage.experiment_uri(RunInfo.load(runs / "killed")))
        assert [i for i in fs.get_file_info(pafs.FileSelector(tune_dir, recursive=True)) if "/checkpoint_" in i.path]
        assert "testing:***@" in out and "testing:testing" not in out  # the hint names the storage, not its secret
        shutil.rmtree(runs / "killed")  # the driver's run folder is lost; MLflow (runs/mlflow.db) is not
    # from the storage, no --set: those the search started with come from its run.json
    again = _cmd(runs, "--resume", "killed", *small) if not shared else \
        [*_cmd(runs)[:_cmd(runs).index("--runs-dir") + 2], "--resume", "killed", "--storage", shared]
    resumed = subprocess.run(again, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming killed" in resumed.stdout
    if sig == "SIGKILL":
        assert "Ray processes left by the interrupted driver" in resumed.stdout
    else:
        assert "fetched" in resumed.stdout and "resuming killed with the overrides it started with" in resumed.stdout
        assert f"resuming killed from {preflight.redacted(storage.join(shared, 'killed', 'tune'))}" in resumed.stdout
        assert storage.exists(storage.join(shared, "killed", "report.md"))  # the end's copy
    import psutil

    assert not [p["pid"] for p in ray_pids if psutil.pid_exists(p["pid"]) and
                abs(psutil.Process(p["pid"]).create_time() - p["created"]) < 0.01]  # none of the old Ray left
    _check_invariants(runs, "killed", 4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, timeout: float = 120) -> None:
    """Waits until the MLflow server on ``port`` answers its health check (as the search's own check will)."""
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"the MLflow server on port {port} never answered /health")


def test_failing_trials_never_take_the_search_down(tmp_path):
    """Injected faults (exception, NaN loss, out of memory) fail their trials; the search completes."""
    runs = tmp_path / "runs"
    env = {**_env(tmp_path), "SDE_FAULT": "raise@1:output_format=json,nan@1:label_style=number,"
                                          "oom@1:unmentioned=omit,raise_once@2:instruction=first",
           "SDE_FAULT_MARK": str(tmp_path / "mark")}
    proc = subprocess.run(_cmd(runs, "--name", "faults", "--set", "space.budget.max_failures=1", *NO_SEED_STAGE),
                          cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (runs / "faults" / "report.md").read_text()
    assert "## Failed trials" in report
    client, parent, children = _mlflow_runs(runs, "faults")
    assert parent.info.status == "FINISHED"
    failed = [c for c in children if c.data.tags.get("budget") == "failed"]
    assert len(failed) >= 2, [c.data.tags.get("design") for c in children]
    assert all(c.info.status == "FAILED" and c.data.tags.get("error") for c in failed)
    errors = " ".join(c.data.tags["error"] for c in failed)
    assert any(word in errors for word in ("injected fault", "loss became nan", "out-of-memory")), errors
    assert len(children) == 6 and all(c.info.status != "RUNNING" for c in children)
    assert "winner" in json.loads((runs / "faults" / "verdict.json").read_text())
    assert (tmp_path / "mark.once").exists()  # ES-SDE failed once at report 2 ...
    es_sde = [c for c in children if c.data.tags["design"] == "first/exclude/lines/placeholder/text/none"]
    assert es_sde[0].data.tags["budget"] == "full"  # ... and max_failures=1 retried it from its checkpoint


def _listeners(root_pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of a process tree."""
    import psutil

    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            out += [(c.laddr.ip, c.laddr.port, p.name()) for c in p.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def test_tracking_server_goes_away_and_every_listener_is_loopback(tmp_path):
    """An MLflow server dies mid-search: trials go on, the search completes with its local report.

    While the search runs, every socket its processes (driver, Ray, workers) listen on is on 127.0.0.1.
    """
    port = _free_port()
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--default-artifact-root", str(tmp_path / "server-artifacts")],
                              env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        _wait_healthy(port)
        search = subprocess.Popen(_cmd(tmp_path / "runs", "--name", "away", "--tracking-uri",
                                       f"http://127.0.0.1:{port}", *NO_SEED_STAGE),
                                  cwd=tmp_path, env=_env(tmp_path), text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        seen: list[tuple[str, int, str]] = []
        lines = []
        for line in search.stdout:
            lines.append(line)
            if "start " in line and not seen:
                time.sleep(3)
                seen = _listeners(search.pid)
            if "done " in line or "stop " in line:
                break
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server goes away mid-search
        out = "".join(lines) + search.communicate(timeout=900)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
    assert search.returncode == 0, out[-3000:]
    assert "MLflow unreachable" in out or "MLflow step failed" in out
    assert (tmp_path / "runs" / "away" / "report.md").exists()
    rows = json.loads((tmp_path / "runs" / "away" / "trials.json").read_text())
    assert len(rows) == 6 and all(r["status"] in ("full", "stopped") for r in rows)  # no trial lost
    assert seen, "no listening sockets found"
    assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip, _, _ in seen), seen  # loopback only
