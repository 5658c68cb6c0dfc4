"""Command line: ``sde-search --task T.yaml`` and its sub-commands.

Exit codes: 0 ok, 2 a user mistake (a :class:`ConfigError`, printed without a
traceback), 1 anything else. ``--check`` imports no torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sde_search import preflight, render_check, scaffold
from sde_search.config import (
    ConfigError,
    SpaceConfig,
    Task,
    builtin_spaces,
    check_compatible,
    check_design,
    codes_text,
    find_space,
    load_space,
    load_task,
    read_yaml,
)
from sde_search.design import DIMENSIONS, ES_SDE, PAPER_BASELINE, PRESETS, Design, parse_design
from sde_search.render import parse, render
from sde_search.tasks import clip

COMMANDS = ("search", "train", "ui", "report", "export", "robust", "init")


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="Task YAML ('sde-search init masa' writes one to start from).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a task key (e.g. train.lr=1.0e-3, data.root=/data); 'space.' prefix: a space key.")


def _count(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 or fewer would do nothing, yet overwrite results)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{clip(repr(text), 50)} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port from 1 to 65535 (0 would bind a random port the printed address does not name)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{clip(repr(text), 50)} is not a whole number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value}: a port is 1 to 65535")
    return value


def _starter(text: str) -> str:
    """An argparse type: a starter kind of ``init`` (``masa``, ``ner``, ``events``) or a task type naming one."""
    kind = scaffold.kind_of(text)
    if kind is None:
        names = [*scaffold.KINDS, *scaffold.ALIASES]
        raise argparse.ArgumentTypeError(f"{clip(repr(text), 50)} is not a starter"
                                         f"{preflight.did_you_mean(text, names)} (allowed: {', '.join(names)})")
    return kind


EPILOG = """\
examples:
  sde-search init masa my_task                  a starter task file and a small data sample in my_task/
  sde-search --task my_task/task.yaml --check   validate it and print renders; trains nothing
  sde-search train --task my_task/task.yaml     train and score one design (no Ray, no MLflow)
  sde-search --task my_task/task.yaml           the search (Ray Tune + Optuna + ASHA, MLflow in ./runs)
  sde-search ui                                 MLflow UI for ./runs
  sde-search report RUN                         rebuild a finished search's report
  sde-search --task examples/demo_masa.yaml     the demo search, in a clone of the repository
  sde-search COMMAND --help                     the options of one command (search is the default)
"""

SEARCH_EPILOG = """\
examples:
  sde-search --task my_task/task.yaml --check
  sde-search --task my_task/task.yaml --check --design output_format=json,reasoning=cot
  sde-search --task my_task/task.yaml --space sde_core --set train.epochs=6 --set space.budget.num_samples=24
  sde-search --task my_task/task.yaml --resume
  sde-search --task examples/demo_masa.yaml     the demo search, in a clone of the repository
(my_task/task.yaml: written by 'sde-search init masa my_task')
"""


def version_line() -> str:
    """``sde-search X (ray ..., optuna ..., ...)``, read from the installed metadata (nothing heavy is imported)."""
    from importlib import metadata

    from sde_search import __version__

    libs = []
    for name in ("ray", "optuna", "mlflow", "torch", "transformers", "peft"):
        try:
            libs.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            libs.append(f"{name} not installed")
    return f"sde-search {__version__} ({', '.join(libs)})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``search`` is the default command)."""
    parser = argparse.ArgumentParser(prog="sde-search", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", "-V", action="version", version=version_line(),
                        help="Print the versions of sde-search and the libraries it runs on, then exit.")
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("search", help="Search sample designs (default command).", epilog=SEARCH_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_task_args(s)
    s.add_argument("--space", help=f"Search-space YAML, or a built-in space: {', '.join(builtin_spaces())} "
                   "(default: the task's search_space).")
    s.add_argument("--check", action="store_true", help="Validate and print renders; train nothing.")
    s.add_argument("--design", action="append", default=[], help="Extra design to show with --check.")
    s.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN",
                   help="Resume an interrupted search (default: the latest run of this task).")
    s.add_argument("--address", help="Join an existing Ray cluster (default: a local Ray on 127.0.0.1).")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under the run directory).")
    s.add_argument("--name", help="Run name (default: <task>-<timestamp>).")
    s.add_argument("--runs-dir", default="runs", help="Where run directories go (default: ./runs).")
    s.add_argument("--warm-start", nargs="+", default=[], metavar="RUN",
                   help="Enqueue the best designs of earlier searches (run names or folders) as first trials.")
    t = sub.add_parser("train", help="Train and score one design, without Ray or MLflow.")
    _add_task_args(t)
    t.add_argument("--design", default="es_sde", help="Preset, key=value,... or a design YAML (default: es_sde).")
    t.add_argument("--out", help="Folder for checkpoints, metrics.jsonl, the generations (outputs/design.<split>"
                   ".jsonl: prompt, target, output, parsed answer per record) and, with --full, the final adapter "
                   "(default: runs/train-<task>-<time>).")
    t.add_argument("--test", action="store_true",
                   help="Also score the test splits (test_id, test_ood when the task has them) once, from the last "
                        "checkpoint: a 'test' row in the table, test_metrics.json and their generations.")
    t.add_argument("--full", action="store_true",
                   help="Final fine-tune: every training record (data.max_* ignored), full eval sets.")
    r = sub.add_parser("report", help="Rebuild the report (markdown + plots) of a finished search.")
    r.add_argument("run", help="Run name (under --runs-dir) or run folder.")
    r.add_argument("--runs-dir", default="runs", help="Where run directories are (default: ./runs).")
    r.add_argument("--rescore", action="store_true",
                   help="Score the winner, ES-SDE and the baseline on the test sets again (from their checkpoints; "
                        "a stopped preset is retrained), e.g. after that step failed.")
    e = sub.add_parser("export", help="Write a design and the task's data rendered in it (JSONL).")
    e.add_argument("run", help="Run name (under --runs-dir) or run folder.")
    e.add_argument("--runs-dir", default="runs", help="Where run directories are (default: ./runs).")
    e.add_argument("--design", help="Preset, key=value,... or design YAML (default: the run's best_design.yaml).")
    e.add_argument("--out", required=True, help="Output folder: new, or one without the files export writes "
                   "(export never replaces a file; there is no --force).")
    b = sub.add_parser("robust", help="Re-score the top designs of a search under the paper's perturbations.")
    b.add_argument("run", help="Run name (under --runs-dir) or run folder.")
    b.add_argument("--runs-dir", default="runs", help="Where run directories are (default: ./runs).")
    b.add_argument("--top", type=_count, default=3, help="How many designs, at least 1 (default: 3).")
    b.add_argument("--no-retrain", action="store_true", help="Skip the half-training-set retrain.")
    u = sub.add_parser("ui", help="Start the MLflow UI on 127.0.0.1 for the runs folder's store.")
    u.add_argument("--runs-dir", default="runs", help="The runs folder whose mlflow.db to show (default: ./runs).")
    u.add_argument("--port", type=_port, default=5000, help="Port, 1 to 65535 (default: 5000).")
    u.add_argument("--host", default="127.0.0.1", help="Bind address (default: 127.0.0.1, this machine only).")
    i = sub.add_parser("init", help="Write a commented starter task file and a small synthetic data sample.")
    i.add_argument("kind", type=_starter, metavar="TYPE",
                   help=f"The kind of task: {', '.join(scaffold.KINDS)} (or a task type: "
                        f"{', '.join(scaffold.ALIASES)}).")
    i.add_argument("dir", nargs="?", metavar="DIR", help="Folder to write task.yaml and data/ into; it may exist, "
                   "but none of the files init writes may (default: ./TYPE_task).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sde-search`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "-V", "--version"):
        argv.insert(0, "search")
    args = build_parser().parse_args(argv)
    _show_progress()
    if args.command is None:
        build_parser().print_help()
        return 0
    try:
        if args.command == "search":
            return _search(args)
        if args.command == "train":
            return _train(args)
        if args.command == "ui":
            return _ui(args)
        if args.command == "init":
            return _init(args)
        if args.command in ("report", "export", "robust"):
            return _after_search(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


def _show_progress() -> None:
    """Library modules log their progress (the seed stage's runs, say); the command shows it on stdout."""
    logger = logging.getLogger("sde_search")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    task = [o for o in overrides if not o.startswith("space.")]
    space = [o.removeprefix("space.") for o in overrides if o.startswith("space.")]
    return task, space


def load_task_and_space(task_path: str, space_path: str | None, overrides: Sequence[str],
                        address: str | None = None, new_search: bool = True) -> tuple[Task, SpaceConfig, Path]:
    """Loads a task and its search space and cross-checks them (raises ConfigError)."""
    task_over, space_over = _split_overrides(overrides)
    task = load_task(task_path, task_over)
    if space_path is None:
        if task.config.search_space is None:
            raise ConfigError([f"{task.path}: search_space: no search space given (set it or pass --space)"])
        resolved = find_space(task.config.search_space, task.path.parent, f"{task.path}: search_space")
    else:
        resolved = find_space(space_path, Path.cwd(), "--space")
    space = load_space(resolved, space_over)
    check_compatible(task, space, resolved, local=address is None, new_search=new_search)
    return task, space, resolved


def _search(args: argparse.Namespace) -> int:
    task, space, space_path = load_task_and_space(args.task, args.space, args.overrides, args.address,
                                                  new_search=not args.resume)
    extra = []
    for spec in args.design if args.check else []:
        design = load_design(spec)
        check_design(task, design, f"--design {spec!r}")
        extra.append(design)
    uri = None if args.resume else args.tracking_uri  # a resumed search keeps the store it started with
    problems = [f"--tracking-uri {preflight.cut(uri)}: {p}" for p in preflight.tracking_problems(uri)] if uri else []
    baselines = [ES_SDE, PAPER_BASELINE, *(PRESETS[b] for b in space.baselines if b in PRESETS)]
    trip = render_check.round_trip(task, render_check.space_designs(space, [*baselines, *extra]))
    problems.extend(render_check.problems(task, space, [*baselines, *extra], trip))  # what --check prints must hold
    if problems:
        raise ConfigError(problems)
    if args.check:
        print_check(task, space, space_path, extra, trip)
        return 0
    from sde_search import search  # heavy: Ray, MLflow

    return search.run_search(task, space, space_path, args)


def _train(args: argparse.Namespace) -> int:
    full = ["data.max_train=null", "data.max_eval=null", "data.max_test=null"] if args.full else []
    task = load_task(args.task, [*_split_overrides(args.overrides)[0], *full])
    design = load_design(args.design)
    check_design(task, design, f"--design {args.design!r}")
    if args.test and not {"test_id", "test_ood"} & set(task.splits):
        raise ConfigError([f"{task.path}: data: --test scores test_id and test_ood, but the task names neither "
                           "(add data.test_id, or leave out --test)"])
    out = Path(args.out) if args.out else train_folder(task.config.name)
    if out.exists() and not out.is_dir():
        raise ConfigError([f"--out {clip(str(out))}: is a file, not a folder (name a new or existing folder)"])
    from sde_search import train  # heavy: torch, peft

    return train.main(task, design, out=out, save_adapter=args.full, test=args.test)


def train_folder(task_name: str, runs_dir: Path = Path("runs")) -> Path:
    """``runs/train-<task>-<time>``, the default ``train --out``; a suffix keeps two runs in one second apart."""
    base = path = runs_dir / f"train-{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    k = 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _init(args: argparse.Namespace) -> int:
    folder = Path(args.dir or f"{args.kind}_task")
    if folder.exists() and not folder.is_dir():
        raise ConfigError([f"{clip(str(folder))}: is a file, not a folder (name a new or existing folder)"])
    try:
        written = scaffold.write(args.kind, folder)
    except FileExistsError as exc:
        raise ConfigError([f"{clip(str(exc.filename))}: already exists; init never replaces a file (name another "
                           "folder, or move the file away)"]) from None
    except OSError as exc:
        raise ConfigError([f"{clip(str(exc.filename or folder))}: cannot write the starter there "
                           f"({exc.strerror or exc})"]) from None
    task, *data = written
    print(f"wrote {task} (a {args.kind} task; its comments say what to change) and {len(data)} data files in "
          f"{task.parent / 'data'}: " + ", ".join(f"{p.name} {written[p]}" for p in data))
    print("next:")
    for step in ("--task {} --check", "train --task {}", "--task {}"):
        print("  sde-search " + step.format(task))
    return 0


def _ui(args: argparse.Namespace) -> int:
    db = (Path(args.runs_dir) / "mlflow.db").resolve()
    if not db.exists():
        raise ConfigError([f"--runs-dir {args.runs_dir}: no mlflow.db there (run a search first)"])
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

    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    base = f"http://{f'[{shown}]' if ':' in shown else shown}:{args.port}"
    print(f"MLflow UI for {uri} at {base}  (Ctrl-C stops it); the runs of each experiment:", flush=True)
    for exp_id, name in tracking.experiments(uri):
        print(f"  {name}: {tracking.runs_view_url(base, exp_id)}", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
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
    import signal
    import subprocess

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


def run_folder(run: str, runs_dir: str) -> Path:
    """A finished or interrupted search's folder, by name under ``runs_dir`` or by path (raises ConfigError)."""
    for path in (Path(runs_dir) / run, Path(run)):
        if (path / "run.json").is_file():
            return path.resolve()
    raise ConfigError([f"{run}: no search run there (looked for run.json in {Path(runs_dir) / run} and {run})"])


def _after_search(args: argparse.Namespace) -> int:
    """``report`` / ``export`` / ``robust`` on a run folder.

    The folder's files are checked before the task is loaded, anything heavy is imported or anything is written:
    a broken one ends the command with its name and what is wrong.
    """
    from sde_search import analysis

    folder = run_folder(args.run, args.runs_dir)
    info = analysis.read_run_info(folder)
    if args.command == "export":
        return _export(args, folder, info)
    if not (folder / "trials.json").exists():
        raise ConfigError([f"{folder}: the search has not finished (no trials.json); resume it with "
                           f"--resume {folder.name}"])
    analysis.load_rows(folder / "trials.json")
    if args.command == "report":
        if (folder / "summary.json").exists():
            analysis.read_summary(folder / "summary.json")
        if not args.rescore:  # --rescore writes verdict.json anew
            analysis.read_verdict(folder / "verdict.json")
    task, space = _run_task(folder, info)
    from sde_search import report, search

    if args.command == "report":
        if args.rescore:
            report.rescore(folder, task, space)
        print(report.build(folder, task, space))
        return 0
    run_info = search.RunInfo.load(folder)
    from sde_search import robust

    print(robust.run(run_info, task, args.top, threads=max(1, int(space.resources.cpu)), retrain=not args.no_retrain))
    return 0


def _run_task(folder: Path, info: dict, extra: Sequence[str] = ()) -> tuple[Task, SpaceConfig]:
    """The task and space a search ran with, as ``run.json`` names them (with its ``--set`` overrides)."""
    gone = [f"{folder / 'run.json'}: {key}: {clip(info[key])}: file not found ({what} the search ran with); put it "
            f"back, or fix {key} in run.json" for key, what in (("task_path", "the task"), ("space_path", "the space"))
            if not Path(info[key]).is_file()]
    if gone:
        raise ConfigError(gone)
    task, space, _ = load_task_and_space(info["task_path"], info["space_path"], [*info.get("overrides", []), *extra],
                                         new_search=False)
    return task, space


def _export(args: argparse.Namespace, folder: Path, info: dict) -> int:
    """``export``: the run's best design (or ``--design``) and every record of the task rendered in it."""
    from sde_search import export

    best = folder / "best_design.yaml"
    if not args.design and not best.exists():
        raise ConfigError([f"{folder}: no best_design.yaml (the search has no winner); pass --design"])
    problems = export.out_problems(Path(args.out))
    data: dict = {}
    if not args.design:
        data = read_yaml(best, problems)
        if not isinstance(data.get("train") or {}, dict):
            problems.append(f"{best}: train: expected a mapping of training values (lr: ...), got "
                            f"{clip(repr(data['train']), 80)}")
    if problems:
        raise ConfigError(problems)
    design = load_design(args.design) if args.design else design_from_yaml(data, best)
    task, _ = _run_task(folder, info, ["data.max_train=null", "data.max_eval=null", "data.max_test=null"])
    check_design(task, design, f"--design {args.design or best}")
    counts = export.export(task, design, Path(args.out), data.get("train") or {})
    print(f"exported {design.short()} to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"final fine-tune with this tool: sde-search train --task {info['task_path']} "
          f"--design {Path(args.out) / 'design.yaml'} --full --out final")
    return 0


def load_design(spec: str) -> Design:
    """A preset, ``key=value,...`` or a design YAML file (raises ConfigError)."""
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        problems: list[str] = []
        data = read_yaml(path, problems)  # a missing, unreadable or odd file (FIFO, link loop) is one problem
        if problems:
            raise ConfigError([f"--design {p}" for p in problems])
        return design_from_yaml(data, path)
    try:
        return parse_design(spec)
    except ValueError as exc:
        raise ConfigError([f"--design {clip(repr(spec))}: {clip(str(exc))}"]) from exc


def design_from_yaml(data: dict, path: Path) -> Design:
    """The design of a design YAML (its ``design:`` mapping, or the mapping itself), e.g. ``best_design.yaml``.

    Each key and value is checked on its own (a value is never spliced into a ``key=value`` spec, where a comma
    in it would set another dimension); every problem names the file and the key (raises ConfigError).
    """
    block = data.get("design", data)
    if not isinstance(block, dict):
        raise ConfigError([f"{path}: design: expected a mapping of dimension: value, got {clip(repr(block), 80)}"])
    problems = []
    for key, value in block.items():
        name = str(key).removeprefix("design.")
        if name not in DIMENSIONS:
            problems.append(f"{path}: design.{clip(name, 60)}: not a design dimension; allowed: "
                            f"{', '.join(DIMENSIONS)}")
        elif not isinstance(value, str) or value not in DIMENSIONS[name]:
            problems.append(f"{path}: design.{name}: {clip(repr(value), 80)} is not one of "
                            f"{', '.join(DIMENSIONS[name])}")
    if problems:
        raise ConfigError(problems)
    return Design(**{str(k).removeprefix("design."): v for k, v in block.items()})


def print_check(task: Task, space: SpaceConfig, space_path: Path, extra: Sequence[Design],
                trip: render_check.RoundTrip | None = None) -> None:
    """Prints what ``--check`` shows: counts, each split's source, space size, renders and their round trips."""
    print(f"task {task.config.name} ({task.config.type}) from {task.path}")
    print("data: " + ", ".join(f"{k} {len(v)}" for k, v in task.splits.items()))
    print("splits:")
    for split, source in task.sources.items():
        print(f"  {split}: {source}")
    print(f"slots: {', '.join(task.slots)}" + (f" | OOD slots: {', '.join(task.ood_slots)}"
                                             if task.ood_slots != task.slots else ""))
    if not task.kind.multi_valued and "number" in {*space.design_choices()["label_style"],
                                                   *(d.label_style for d in extra)}:
        print(f"label codes (label_style number; inferred where labels.numbers gives none): "
              f"{codes_text(task.config.labels.numbers)}")
    print(f"space {space_path.name}: {space.size()} designs; budget {space.budget.num_samples} trials, "
          f"{space.budget.max_concurrent} at once; objective {task.config.objective}")
    for note in [task.kappa_note(), *render_check.notes(task, space)]:
        if note:
            print(f"note: {note}")
    for line in render_check.round_trip_lines(trip) if trip else []:  # every record of every split
        print(line)
    record = task.splits["train"][0]
    designs = {"paper_baseline": PAPER_BASELINE, "es_sde": ES_SDE}
    designs.update({d.short(): d for d in extra})
    for name, design in designs.items():
        sample = render(record, design, task)
        parsed = parse(sample.target, design, task, slots=record.slots)
        ok = parsed.answer == task.gold(record, "train") and not parsed.errors
        lengths = [len((s.prompt + s.target).split()) for s in
                   (render(r, design, task) for r in task.splits["train"][:50])]
        print(f"\n== {name}: {design.short()}")
        if design.prompt_template == "chat":
            print("(prompt_template chat: the prompt below is wrapped in the model's chat template when trained)")
        print(sample.prompt + sample.target)
        print(f"-- round trip: {'ok' if ok else 'FAILED ' + str(parsed.errors)}; "
              f"~{sum(lengths) / len(lengths):.0f} words per sample (max {max(lengths)}, first 50 records)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()
    sys.exit(main())
