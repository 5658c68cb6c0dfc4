"""Command line: ``sde-search --task T.yaml`` and its sub-commands.

Exit codes: 0 ok, 2 a user mistake (a :class:`ConfigError`, printed without a
traceback), 1 anything else. ``--check`` imports no torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sde_search import cli_check, console, preflight, render_check, scaffold
from sde_search.config import (
    ConfigError,
    SpaceConfig,
    Task,
    builtin_spaces,
    check_design,
    load_task,
    load_task_and_space,
    read_yaml,
    split_overrides,
)
from sde_search.design import DESIGN_PREFIX, DIMENSIONS, ES_SDE, PAPER_BASELINE, PRESETS, Design, parse_design
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
    _search_args(sub.add_parser("search", help="Search sample designs (default command).", epilog=SEARCH_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter))
    _train_args(sub.add_parser("train", help="Train and score one design, without Ray or MLflow."))
    r = _run_args(sub.add_parser("report", help="Rebuild the report (markdown + plots) of a finished search."))
    r.add_argument("--rescore", action="store_true",
                   help="Score the winner, ES-SDE and the baseline on the test sets again (from their checkpoints; "
                        "a stopped preset is retrained), e.g. after that step failed.")
    e = _run_args(sub.add_parser("export", help="Write a design and the task's data rendered in it (JSONL)."))
    e.add_argument("--design", help="Preset, key=value,... or design YAML (default: the run's best_design.yaml).")
    e.add_argument("--out", required=True, help="Output folder: new, or one without the files export writes "
                   "(export never replaces a file; there is no --force).")
    b = _run_args(sub.add_parser("robust", help="Re-score the top designs of a search under the paper's "
                                 "perturbations."))
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


def _search_args(s: argparse.ArgumentParser) -> None:
    """The options of ``search``."""
    _add_task_args(s)
    s.add_argument("--space", help=f"Search-space YAML, or a built-in space: {', '.join(builtin_spaces())} "
                   "(default: the task's search_space).")
    s.add_argument("--check", action="store_true", help="Validate and print renders; train nothing.")
    s.add_argument("--design", action="append", default=[], help="Extra design to show with --check.")
    s.add_argument("--estimate", action="store_true",
                   help="Time a few real training steps and generation batches, then print the expected wall time "
                        "of the search (with and without ASHA), the exhaustive grid and the seed stage; trains no "
                        "search, creates no run folder or MLflow run, starts no Ray.")
    s.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN",
                   help="Resume an interrupted search (default: the latest run of this task).")
    s.add_argument("--address", help="Join an existing Ray cluster (default: a local Ray on 127.0.0.1).")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under the run directory).")
    s.add_argument("--storage", metavar="PATH_OR_URI",
                   help="Shared storage for Tune's experiment, the trials' checkpoints and a copy of the run folder: "
                        "a folder every node sees, or a URI pyarrow opens (s3://, gs://, file://). Needed when "
                        "trials run on other machines; with --resume, where a run missing here is fetched from "
                        "(default: the task's tracking.storage, else the run folder alone).")
    s.add_argument("--name", help="Run name (default: <task>-<timestamp>).")
    s.add_argument("--runs-dir", default="runs", help="Where run directories go (default: ./runs).")
    s.add_argument("--warm-start", nargs="+", default=[], metavar="RUN",
                   help="Enqueue the best designs of earlier searches (run names or folders) as first trials.")


def _train_args(t: argparse.ArgumentParser) -> None:
    """The options of ``train``."""
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


def _run_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments every command on a finished search shares (``report``, ``export``, ``robust``)."""
    p.add_argument("run", help="Run name (under --runs-dir) or run folder.")
    p.add_argument("--runs-dir", default="runs", help="Where run directories are (default: ./runs).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sde-search`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "-V", "--version"):
        argv.insert(0, "search")
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    with console.shown():  # library modules log; the user sees their records as plain lines
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Runs one parsed command; a user mistake is printed as ``error: ...`` lines and exit code 2."""
    try:
        if args.command == "search":
            return _search(args)
        if args.command == "train":
            return _train(args)
        if args.command == "ui":
            from sde_search import cli_ui

            return cli_ui.main(args.runs_dir, args.host, args.port)
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


def _search(args: argparse.Namespace) -> int:
    if args.estimate and args.resume:
        raise ConfigError(["--estimate: estimates a new search; it cannot be combined with --resume"])
    if args.estimate and args.check:
        raise ConfigError(["--estimate: trains a few steps, --check trains nothing; give one of them"])
    task, space, space_path = load_task_and_space(args.task, args.space, args.overrides, args.address,
                                                  new_search=not args.resume)
    extra = []
    for spec in args.design if args.check else []:
        design = load_design(spec)
        check_design(task, design, f"--design {spec!r}")
        extra.append(design)
    uri = None if args.resume else args.tracking_uri  # a resumed search keeps the store it started with
    problems = [f"--tracking-uri {preflight.cut(uri)}: {p}" for p in preflight.tracking_problems(uri)] if uri else []
    if args.storage is not None:
        problems += [f"--storage {p}" for p in preflight.storage_problems(args.storage)]
    baselines = [ES_SDE, PAPER_BASELINE, *(PRESETS[b] for b in space.baselines if b in PRESETS)]
    trip = render_check.round_trip(task, render_check.space_designs(space, [*baselines, *extra]))
    problems.extend(render_check.problems(task, space, [*baselines, *extra], trip))  # what --check prints must hold
    if problems:
        raise ConfigError(problems)
    if args.check:
        cli_check.print_check(task, space, space_path, extra, trip)
        return 0
    if args.estimate:
        return _estimate(task, space, space_path)
    from sde_search import search  # heavy: Ray, MLflow

    options = search.SearchOptions(runs_dir=Path(args.runs_dir), name=args.name, resume=args.resume,
                                   address=args.address, tracking_uri=args.tracking_uri, storage=args.storage,
                                   overrides=tuple(args.overrides), warm_start=tuple(args.warm_start))
    return search.run_search(task, space, space_path, options)


def _estimate(task: Task, space: SpaceConfig, space_path: Path) -> int:
    """``--estimate``: times the parts of a trial and prints what the search would cost; starts nothing."""
    t0 = time.perf_counter()
    from sde_search import estimate  # heavy: torch, transformers, peft (what every trial's worker imports too)

    print(estimate.run(task, space, space_path, import_s=time.perf_counter() - t0))
    return 0


def _train(args: argparse.Namespace) -> int:
    full = ["data.max_train=null", "data.max_eval=null", "data.max_test=null"] if args.full else []
    task = load_task(args.task, [*split_overrides(args.overrides)[0], *full])
    design = load_design(args.design)
    check_design(task, design, f"--design {args.design!r}")
    if args.test and not {"test_id", "test_ood"} & set(task.splits):
        raise ConfigError([f"{task.path}: data: --test scores test_id and test_ood, but the task names neither "
                           "(add data.test_id, or leave out --test)"])
    out = Path(args.out) if args.out else train_folder(task.config.name)
    if out.exists() and not out.is_dir():
        raise ConfigError([f"--out {clip(str(out))}: is a file, not a folder (name a new or existing folder)"])
    from sde_search import cli_train  # heavy: torch, peft

    return cli_train.main(task, design, out=out, save_adapter=args.full, test=args.test)


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
    from sde_search import report

    if args.command == "report":
        if args.rescore:  # trains: the only path of this command that imports torch (and Ray, MLflow)
            from sde_search import stages

            stages.rescore(folder, task, space)
        print(report.build(folder, task, space))
        return 0
    from sde_search import stages
    from sde_search.runfolder import RunInfo

    run_info = RunInfo.load(folder)
    print(stages.robust_checks(run_info, task, args.top, threads=max(1, int(space.resources.cpu)),
                               retrain=not args.no_retrain))
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
        name = str(key).removeprefix(DESIGN_PREFIX)
        if name not in DIMENSIONS:
            problems.append(f"{path}: design.{clip(name, 60)}: not a design dimension; allowed: "
                            f"{', '.join(DIMENSIONS)}")
        elif not isinstance(value, str) or value not in DIMENSIONS[name]:
            problems.append(f"{path}: design.{name}: {clip(repr(value), 80)} is not one of "
                            f"{', '.join(DIMENSIONS[name])}")
    if problems:
        raise ConfigError(problems)
    return Design(**{str(k).removeprefix(DESIGN_PREFIX): v for k, v in block.items()})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.perf_counter()
    sys.exit(main())
