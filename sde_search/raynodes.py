"""The Ray the search runs on: starting or joining it, and stopping what a killed driver left behind.

A local search starts its own Ray on 127.0.0.1 (never a stale cluster found through ``/tmp/ray``); ``--address``
joins a cluster started elsewhere. The Ray processes a local driver starts are recorded in the run folder
(``ray_processes.json``), so that ``--resume`` after a SIGKILL can stop the ones still running.

Imports Ray and psutil (and tracking, for the name of MLflow's telemetry variable); never torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import ray

from sde_search import tracking
from sde_search.config import ConfigError, SpaceConfig

log = logging.getLogger(__name__)

WORKER_ENV = ("SDE_FAULT", "SDE_FAULT_MARK", "SDE_CACHE", "PYTHONPATH", "HF_HUB_OFFLINE", tracking.TELEMETRY_ENV)
"""Variables of the driver's environment that the trials' processes get too."""


def start(address: str | None, space: SpaceConfig) -> float:
    """Starts (or joins) Ray and checks the per-trial resources; returns the seconds it took."""
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    log_to(logging.NullHandler())
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False,
                              "configure_logging": False}
    t0 = time.time()
    if address:  # a cluster's workers were started elsewhere: the variables travel in the runtime env
        check_address(address)
        ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
    else:
        # A local instance's workers inherit this process's environment; a runtime env would instead make
        # Ray start a fresh worker per trial slot (0.9 s measured) rather than use its pre-started ones.
        os.environ.update(env)
        # address="local": always a new instance, never a stale cluster found through /tmp/ray.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(space.resources.cpu)),
                 num_gpus=None if space.resources.gpu else 0, **kwargs)
    seconds = time.time() - t0
    try:
        check_resources(space)
    except ConfigError:
        ray.shutdown()
        raise
    where = f"joined the Ray cluster at {address}" if address else "started Ray on 127.0.0.1"
    total = ray.cluster_resources()
    log.info(f"{where} in {seconds:.1f} s ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs)")
    return seconds


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuses ``--address HOST:PORT`` when nothing listens there (raises ConfigError).

    Ray's own connection attempt retries for many minutes, printing warnings, before it gives up. ``auto``
    and ``ray://`` addresses are left to Ray.
    """
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError([f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start its "
                           f"head with `ray start --head --port={port}` or give the address it printed"]) from exc


def shared_disk_warning(storage: str) -> str | None:
    """A warning when the joined cluster has more than one node and the search keeps its experiment on this disk.

    Tune then writes each trial's checkpoints on the disk of the node that trains it, at the run folder's path:
    a trial restarted on another node, or a ``--resume``, does not find them.
    """
    if storage:
        return None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return None
    return (f"warning: the Ray cluster has {len(nodes)} nodes and no --storage was given: trials on other nodes "
            "keep their checkpoints on their own disks, where a restarted trial or --resume cannot find them "
            "(unless the runs folder is on a disk every node mounts); give --storage PATH_OR_URI")


def log_to(handler: logging.Handler) -> None:
    """Sends the records of Ray's own loggers (on the driver) to ``handler`` alone, e.g. the run's ``ray.log``."""
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False


def check_resources(space: SpaceConfig) -> None:
    """Refuses per-trial resources the running Ray cluster does not have (raises ConfigError)."""
    total = ray.cluster_resources()
    for key, need in (("CPU", space.resources.cpu), ("GPU", space.resources.gpu)):
        if need and total.get(key, 0) < need:
            raise ConfigError([f"resources.{key.lower()}: {need} per trial, but the Ray cluster has "
                               f"{total.get(key, 0):g} {key}s"])


def placement() -> dict[str, str]:
    """Where the calling trial runs, as Ray placed it: node id and IP, GPU ids, and the ``CUDA_VISIBLE_DEVICES`` it set.

    Called inside the Ray worker (the driver cannot see it). GPU ids are comma-separated, empty without a GPU;
    ``cuda_visible_devices`` is ``unset`` when the variable is absent from the worker's environment.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "cuda_visible_devices": "unset" if visible is None else visible}


def record_processes(run_dir: Path) -> None:
    """Writes the PIDs of the Ray processes this driver started, for a later --resume to stop.

    A SIGKILLed driver leaves Ray's gcs_server and raylet running; nothing else knows their PIDs.
    """
    procs = [{"pid": p.pid, "created": p.create_time(), "name": p.name()}
             for p in psutil.Process().children(recursive=True)]
    (run_dir / "ray_processes.json").write_text(json.dumps(procs, indent=1))


def stop_leftovers(run_dir: Path) -> int:
    """Kills the Ray processes a SIGKILLed driver of this run left (by recorded PID and start time only)."""
    path = run_dir / "ray_processes.json"
    if not path.exists():
        return 0
    alive = []
    for entry in json.loads(path.read_text()):
        try:
            proc = psutil.Process(entry["pid"])
            if abs(proc.create_time() - entry["created"]) < 0.01:  # the same process, not a reused PID
                alive += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    if alive:
        log.info(f"stopped {len(alive)} Ray processes left by the interrupted driver")
    path.unlink()
    return len(alive)
