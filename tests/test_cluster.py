"""Real multi-node Ray: searches that join `ray start` nodes through ``--address``.

Two nodes (a head without CPUs and a worker that runs every trial), a head that declares two GPUs this machine
does not have, and a worker node lost while it trains a trial. Each test starts its own Ray nodes (``ray start
--block``, each in its own process group, every port chosen here) and MLflow server, and stops them by process
group at the end: never ``ray stop``, which would stop every Ray instance on the machine.

Ray 2.60 refuses to start a worker node while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the setting that keeps a
local Ray on 127.0.0.1), and with it on, ``ray start`` replaces 127.0.0.1 with the machine's primary address and
listens on every interface. The two-node clusters therefore run as a real cluster does, with Ray's token
authentication on (``RAY_AUTH_MODE=token``); the one-node cluster stays on 127.0.0.1 without a token.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import search_cmd, search_env

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
EXPERIMENT = "masa_fixed"
ES_SDE = "first/exclude/lines/placeholder/text/none"
BASELINE = "last/exclude/natural/placeholder/text/none"
SHORT = ["--set", "data.max_train=120", "--set", "train.epochs=1", "--set", "train.reports_per_epoch=2",
         "--set", "space.budget.seeds=1", "--set", "space.budget.seed_top=0"]
"""Small trials (8 steps, 2 reports) and the smallest seed stage: what these tests check is where trials run."""
HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
"""The head's GCS declares a silent node dead after about 2 s instead of Ray's default of about 15-30 s."""


# ---------------------------------------------------------------- ports, processes, nodes


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on this machine now (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


def _free_range(size: int = 40) -> tuple[int, int]:
    """A run of ``size`` free ports below the ephemeral range, for one node's worker processes."""
    for _ in range(200):
        low = random.randrange(15000, 30000 - size)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(low, low + size):
                    stack.enter_context(socket.socket()).bind(("", port))
            return low, low + size - 1
        except OSError:
            continue
    raise AssertionError("no free range of worker ports")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _group(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


class RayNode:
    """One ``ray start --block`` node in its own process group; its ports are chosen here, its temp dir is its own."""

    def __init__(self, env: dict[str, str], log: Path, *, head_port: int | None = None, address: str | None = None,
                 cpus: int, gpus: int = 0):
        ports = _free_ports(7 if head_port is None else 6)
        low, high = _free_range()
        # Short, own temp dir: Ray's socket paths under it must stay below the 107-character limit of AF_UNIX.
        self.temp_dir = tempfile.mkdtemp(prefix="sde-ray-")
        self.node_manager_port = ports[0]
        self.port = head_port if head_port is not None else ports[6]
        role = (["--head", f"--port={self.port}", "--include-dashboard=false"] if address is None
                else [f"--address={address}"])
        self.args = [RAY, "start", "--block", *role, "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                     f"--num-gpus={gpus}", f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
                     f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
                     f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}",
                     f"--min-worker-port={low}", f"--max-worker-port={high}", f"--temp-dir={self.temp_dir}",
                     "--disable-usage-stats"]
        self.ports = [*ports[:6], *([self.port] if address is None else [])]
        self.env, self.log = env, log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """Starts the node (again, after :meth:`kill`, with the same command)."""
        with open(self.log, "ab") as out:
            self.procs.append(subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def processes(self) -> list[psutil.Process]:
        """Every live process of the node: ``ray start``, the raylet and its children (workers, agents), ..."""
        return [p for proc in self.procs for p in _group(proc.pid)]

    def kill(self) -> int:
        """The node is lost: SIGKILL to each of its processes, by PID; returns how many there were."""
        procs = self.processes()
        assert any(p.name() == "raylet" for p in procs), [p.name() for p in procs]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=15)
        for proc in self.procs:
            proc.wait(timeout=15)
        return len(procs)

    def stop(self) -> None:
        """SIGTERM to the node's process groups, SIGKILL to what is left after a few seconds."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 8  # a head drains for up to 30 s on SIGTERM; nothing here needs it
        while self.processes() and time.time() < deadline:
            time.sleep(0.5)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        psutil.wait_procs(self.processes(), timeout=15)  # SIGKILLed children are gone once init reaps them
        shutil.rmtree(self.temp_dir, ignore_errors=True)


NODES_SCRIPT = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, old, deadline = json.loads(sys.argv[2]), json.loads(sys.argv[3]), time.time() + float(sys.argv[4])
while True:
    alive = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in old}
    if set(want) <= set(alive) or time.time() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(alive))
"""


def _alive_nodes(address: str, env: dict[str, str], *nodes: RayNode, old: tuple[str, ...] = (),
                 timeout: float = 120) -> dict[int, str]:
    """Waits until every node has registered with the cluster; returns their node ids by node manager port.

    ``old``: node ids that do not count (a node started again on the same port gets a new id).
    """
    want = [n.node_manager_port for n in nodes]
    out = subprocess.run([sys.executable, "-c", NODES_SCRIPT, address, json.dumps(want), json.dumps(list(old)),
                          str(timeout)], env=env, capture_output=True, text=True, timeout=timeout + 60)
    assert out.returncode == 0, out.stderr[-3000:]
    found = {int(port): node_id for port, node_id in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    assert set(want) <= set(found), (want, found)
    return found


@contextlib.contextmanager
def _cluster(tmp_path: Path, env: dict[str, str], *, head_cpus: int, head_gpus: int = 0, worker_cpus: int = 0,
             head_env: dict[str, str] | None = None) -> Iterator[tuple[str, RayNode, RayNode | None]]:
    """A head (and a worker node when ``worker_cpus``); yields (address, head, worker), stops both at the end.

    After the nodes stop, none of their processes runs and none of their ports listens.
    """
    head = RayNode({**env, **(head_env or {})}, tmp_path / "ray-head.log", head_port=_free_ports(1)[0],
                   cpus=head_cpus, gpus=head_gpus)
    address = f"127.0.0.1:{head.port}"
    worker = RayNode(env, tmp_path / "ray-worker.log", address=address, cpus=worker_cpus) if worker_cpus else None
    nodes = [head, *([worker] if worker else [])]
    try:
        head.start()
        deadline = time.time() + 120
        while not _listening(head.port) and time.time() < deadline and head.procs[0].poll() is None:
            time.sleep(0.5)
        assert _listening(head.port), head.log.read_text()[-3000:]
        if worker:
            worker.start()
        yield address, head, worker
    finally:
        for node in reversed(nodes):
            node.stop()
    left = [(p.pid, p.name()) for node in nodes for p in node.processes()]
    assert not left, left
    ports = [port for node in nodes for port in node.ports]
    assert not [port for port in ports if _listening(port)], ports


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One ``mlflow server`` on 127.0.0.1 for the module's searches (each search is its own parent run).

    It serves its artifacts (``--serve-artifacts``): yields its URL and the folder they land in, and stops its
    process group at the end.
    """
    tmp_path = tmp_path_factory.mktemp("mlflow")
    port = _free_ports(1)[0]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
                             "--serve-artifacts", "--artifacts-destination", str(tmp_path / "mlflow-artifacts")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=5).read() == b"OK":
                    break
            assert proc.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(1)
        yield url, tmp_path / "mlflow-artifacts"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
    assert not _group(proc.pid) and not _listening(port)


def _cluster_env(tmp_path: Path) -> dict[str, str]:
    """The environment of every process of a two-node cluster and of the search that joins it (see the top)."""
    return {**search_env(tmp_path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16)}


def _search(tmp_path: Path, name: str, address: str, tracking: str, env: dict[str, str],
            *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*search_cmd(tmp_path / "runs", "--name", name, *SHORT, *extra), "--address", address,
           "--tracking-uri", tracking]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


# ---------------------------------------------------------------- what every search here must leave


def _trial_runs(tracking: str, name: str) -> tuple[Any, Any, list[Any]]:
    """(client, parent run, trial runs) of the search ``name`` in the tracking server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(EXPERIMENT)
    parent = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                  "and tags.`sde.kind` = 'trial'")
    return client, parent, children


def _check_bookkeeping(run_dir: Path, tracking: str, n_trials: int) -> tuple[list[Any], dict[str, dict]]:
    """One finished MLflow run per trial, none RUNNING; one Optuna trial per Tune trial, none RUNNING; the report.

    Returns:
        The trial runs, and ``trials.json`` by trial id.
    """
    assert (run_dir / "report.md").exists()
    rows = {r["trial_id"]: r for r in json.loads((run_dir / "trials.json").read_text())}
    _, parent, children = _trial_runs(tracking, run_dir.name)
    assert parent.info.status == "FINISHED"
    names = [c.data.tags["trial_name"] for c in children]
    assert len(names) == len(set(names)) == len(rows) == n_trials, names  # one run per trial, no duplicates
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children)  # none left RUNNING
    assert {c.data.tags["sde.trial_id"] for c in children} == set(rows)
    with sqlite3.connect(run_dir / "optuna.db") as db:
        states = db.execute("select state from trials").fetchall()
    assert len(states) == n_trials and ("RUNNING",) not in states, states
    return children, rows


# ---------------------------------------------------------------- the tests


def test_two_nodes_every_trial_runs_on_the_worker_and_mlflow_serves_the_report(
        tmp_path: Path, mlflow_server: tuple[str, Path]) -> None:
    """A head without CPUs and a worker with two: ``--address`` joins them; every trial runs on the worker.

    The search tracks to an MLflow server, which also takes the report (uploaded over HTTP, read back from it).
    """
    env, (tracking, artifacts) = _cluster_env(tmp_path), mlflow_server
    with _cluster(tmp_path, env, head_cpus=0, worker_cpus=2) as (address, head, worker):
        assert worker is not None
        ids = _alive_nodes(address, env, head, worker)
        head_id, worker_id = ids[head.node_manager_port], ids[worker.node_manager_port]
        proc = _search(tmp_path, "joined", address, tracking, env, "--set", "space.budget.num_samples=3")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"joined the Ray cluster at {address}" in proc.stdout
        assert "the Ray cluster has 2 nodes and no --storage was given" in proc.stdout + proc.stderr
        assert "Leaderboard" in proc.stdout
        run_dir = tmp_path / "runs" / "joined"
        children, _ = _check_bookkeeping(run_dir, tracking, 3)
        placed = [c.data.tags.get("sde.node_id") for c in children]
        assert placed == [worker_id] * 3 and head_id not in placed, (placed, head_id, worker_id)
        assert all(c.data.tags["sde.gpu_ids"] == "" for c in children)
        assert not any(k.startswith(("placement", "node")) for c in children for k in c.data.metrics)

        client, parent, _ = _trial_runs(tracking, "joined")
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")  # the server's store, not a driver folder
        query = urllib.parse.urlencode({"path": "report.md", "run_uuid": parent.info.run_id})
        served = urllib.request.urlopen(f"{tracking}/get-artifact?{query}", timeout=30).read().decode()
        assert served == (run_dir / "report.md").read_text()
        assert list(artifacts.rglob(f"{parent.info.run_id}/**/report.md"))  # it went to the server's destination
        assert "report.md" in {f.path for f in client.list_artifacts(parent.info.run_id)}


def test_fake_gpus_are_shared_two_trials_per_gpu_and_trials_fall_back_to_cpu(
        tmp_path: Path, mlflow_server: tuple[str, Path]) -> None:
    """A head declaring 2 GPUs this machine lacks; 4 trials of ``resources.gpu: 0.5`` run at once, on CPU.

    The local GPU check does not refuse ``gpu: 0.5`` with ``--address`` (the cluster's GPUs count, not this
    machine's); Ray gives each trial one GPU id, two trials per id, and sets ``CUDA_VISIBLE_DEVICES`` to it.
    """
    env = {**search_env(tmp_path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("CUDA_VISIBLE_DEVICES", None)  # Ray refuses --num-gpus=2 when the variable lists fewer
    tracking = mlflow_server[0]
    with _cluster(tmp_path, env, head_cpus=4, head_gpus=2) as (address, _, _):
        no_gpu_here = {**env, "CUDA_VISIBLE_DEVICES": ""}  # the search's own GPU check would find none
        proc = _search(tmp_path, "gpus", address, tracking, no_gpu_here, "--set", "space.budget.num_samples=4",
                       "--set", "space.resources.gpu=0.5", "--set", "space.resources.cpu=1",
                       "--set", "space.budget.max_concurrent=4", "--set", "space.asha.enabled=false")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "(4 CPUs, 2 GPUs)" in proc.stdout
        children, rows = _check_bookkeeping(tmp_path / "runs" / "gpus", tracking, 4)
    assert all(r["status"] == "full" for r in rows.values())  # trained to the end on CPU (no CUDA here)
    gpu_ids = [c.data.tags["sde.gpu_ids"] for c in children]
    assert collections.Counter(gpu_ids) == {"0": 2, "1": 2}, gpu_ids  # one id each, two trials per id
    assert all(c.data.tags["sde.cuda_visible_devices"] == c.data.tags["sde.gpu_ids"] for c in children)
    for gpu in ("0", "1"):  # never more than two trials on one id at any moment
        spans = [(c.info.start_time, c.info.end_time) for c in children if c.data.tags["sde.gpu_ids"] == gpu]
        for start, _ in spans:
            assert sum(s <= start < e for s, e in spans) <= 2, spans


def _results(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial's reports so far (``results/<trial id>.jsonl``)."""
    out = {}
    for path in (run_dir / "results").glob("*.jsonl"):
        rows = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        out[path.stem] = rows
    return out


@pytest.mark.parametrize("max_failures", [2, 0])
def test_a_worker_node_lost_mid_trial(tmp_path: Path, mlflow_server: tuple[str, Path], max_failures: int) -> None:
    """The worker node is killed while the baseline trains (ES-SDE has finished), then started again.

    With ``budget.max_failures: 2`` (and ``--storage``) the baseline restarts from its last checkpoint, read from the
    shared storage, on the returned node; with 0 it
    fails with the reason. Either way the search completes: ES-SDE keeps its finished result, MLflow and the
    Optuna study hold one finished record per trial.
    """
    env = _cluster_env(tmp_path)
    mark = tmp_path / "hanging"
    search_env_ = {**env, "SDE_FAULT": "hang_once@2:instruction=last", "SDE_FAULT_MARK": str(mark)}
    name, tracking = f"lost-{max_failures}", mlflow_server[0]
    run_dir = tmp_path / "runs" / name
    with _cluster(tmp_path, env, head_cpus=0, worker_cpus=2, head_env=HEALTH_CHECK) as (address, head, worker):
        assert worker is not None
        first_id = _alive_nodes(address, env, head, worker)[worker.node_manager_port]
        cmd = [*search_cmd(tmp_path / "runs", "--name", name, *SHORT, "--set", "space.budget.num_samples=2",
                           "--set", "space.sampler.n_startup_trials=1",
                           "--set", "train.epochs=2", "--set", "train.reports_per_epoch=1",
                           "--set", "space.asha.enabled=false", "--set", f"space.budget.max_failures={max_failures}"),
               "--address", address, "--tracking-uri", tracking,
               *(["--storage", (tmp_path / "shared").as_uri()] if max_failures else [])]
        search = subprocess.Popen(cmd, cwd=tmp_path, env=search_env_, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            # The baseline hangs before its second evaluation (its first checkpoint written); ES-SDE finishes.
            deadline, done = time.time() + 400, {}
            while time.time() < deadline and search.poll() is None:
                done = {t: rows[-1] for t, rows in _results(run_dir).items() if rows and rows[-1]["progress"] >= 1}
                if mark.exists() and done:
                    break
                time.sleep(0.5)
            assert mark.exists() and len(done) == 1, (done, search.stdout.read()[-3000:] if search.poll() else "")
            hanging = next(t for t in _results(run_dir) if t not in done)
            assert [r["report"] for r in _results(run_dir)[hanging]] == [1]
            killed = worker.kill()
            assert killed >= 3 and not worker.processes()
            worker.start()  # the same command: same ports and temp dir, a new node id
            second_id = _alive_nodes(address, env, worker, old=(first_id,))[worker.node_manager_port]
            out = search.communicate(timeout=600)[0]
        finally:
            if search.poll() is None:
                os.killpg(search.pid, signal.SIGKILL)
        assert search.returncode == 0, out[-4000:]
        children, rows = _check_bookkeeping(run_dir, tracking, 2)
    (finished_id, before), = done.items()
    assert rows[finished_id]["status"] == "full"  # finished before the kill: kept, with the same score
    assert rows[finished_id]["metrics"]["score"] == pytest.approx(before["score"])
    runs = {c.data.tags["sde.trial_id"]: c for c in children}
    assert runs[finished_id].info.status == "FINISHED" and runs[finished_id].data.tags["sde.node_id"] == first_id
    assert runs[finished_id].data.metrics["score"] == pytest.approx(before["score"], abs=1e-6)
    reports = [r["report"] for r in _results(run_dir)[hanging]]
    with sqlite3.connect(run_dir / "optuna.db") as db:
        states = sorted(s for (s,) in db.execute("select state from trials"))
    if max_failures:
        assert reports == [1, 2]  # restarted from report 1's checkpoint: report 1 was not trained again
        # ... which was on the shared storage (--storage), where the copy of the run folder is too
        assert list((tmp_path / "shared" / name / "tune").glob("trainable_*/checkpoint_*"))
        assert (tmp_path / "shared" / name / "report.md").read_text() == (run_dir / "report.md").read_text()
        assert rows[hanging]["status"] == "full"
        assert runs[hanging].info.status == "FINISHED"
        assert runs[hanging].data.tags["sde.node_id"] == second_id  # the returned node
        assert states == ["COMPLETE", "COMPLETE"]
    else:
        assert reports == [1]
        assert rows[hanging]["status"] == "failed"
        error = rows[hanging]["error"]
        # Ray's last line, e.g. "the actor's node was terminated unexpectedly: health check failed due to ..."
        assert "node" in error and ("terminated" in error or "died" in error) and error == error.strip(), error
        assert runs[hanging].info.status == "FAILED" and runs[hanging].data.tags["error"] == error[:250]
        assert states == ["COMPLETE", "FAIL"]
