"""``sde-search ui``: the MLflow UI on the runs folder's store, run until Ctrl-C, SIGTERM or SIGHUP.

Prints what the user needs (the address, each experiment's runs view); imports MLflow only to list the experiments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sde_search.config import ConfigError


def main(runs_dir: str, host: str, port: int) -> int:
    """``sde-search ui``: the MLflow UI for the runs folder's store, until Ctrl-C; returns the exit code.

    Args:
        runs_dir: The runs folder (``--runs-dir``) whose ``mlflow.db`` is shown.
        host: The address the server binds (``--host``).
        port: Its port (``--port``).

    Raises:
        ConfigError: When the folder has no SQLite store to show.
    """
    db = (Path(runs_dir) / "mlflow.db").resolve()
    if not db.exists():
        raise ConfigError([f"--runs-dir {runs_dir}: no mlflow.db there (run a search first)"])
    if not db.is_file():
        raise ConfigError([f"{db}: is a folder, not the MLflow store (an SQLite file); remove it or pick another "
                           "--runs-dir"])
    with open(db, "rb") as f:
        head = f.read(16)
    if head and head != b"SQLite format 3\x00":
        raise ConfigError([f"{db}: not an SQLite database (it does not start with 'SQLite format 3'); restore it or "
                           "pick another --runs-dir"])
    uri = f"sqlite:///{db}"
    from sde_search import tracking  # turns MLflow's telemetry off here too (unless the user set it)

    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
    print(f"MLflow UI for {uri} at {base}  (Ctrl-C stops it); the runs of each experiment:", flush=True)
    for exp_id, name in tracking.experiments(uri):
        print(f"  {name}: {tracking.runs_view_url(base, exp_id)}", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", "1"]
    return run_server(cmd, ui_env(os.environ))


def ui_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The MLflow server's environment: no job workers, telemetry off unless the user set it."""
    env = {**environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # else 7 huey workers linger after SIGTERM
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a user's own value (false: on) is kept
    return env


def run_server(cmd: Sequence[str], env: Mapping[str, str], grace_s: float = 10.0) -> int:
    """Runs a server in its own process group until it exits or this process gets SIGINT, SIGTERM or SIGHUP.

    The signal is passed on to the server's whole group (``mlflow ui`` starts worker processes of its own, which
    a plain ``subprocess.call`` left running after a SIGTERM); after ``grace_s`` seconds they are killed.
    """
    proc = subprocess.Popen(list(cmd), env=dict(env), start_new_session=True)
    stopped: list[float] = []  # when the first signal came

    def stop(signum: int, frame: object) -> None:
        stopped.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while proc.poll() is None:
            if stopped and time.monotonic() - stopped[0] > grace_s:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):  # workers the server left behind
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        print("MLflow UI stopped", flush=True)
        return 0
    return proc.returncode
