"""Tests for the command line: ``--check`` output and exit codes (0 ok, 2 a user mistake)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sde_search.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("demo_*.yaml"))


def _sections(out: str) -> dict[str, str]:
    """``== name: design`` headers -> the text up to the next header."""
    parts = re.split(r"^== ([^:\n]+): \S+$", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_examples_cover_the_three_task_types() -> None:
    assert [p.name for p in EXAMPLES] == ["demo_entities.yaml", "demo_events.yaml", "demo_masa.yaml",
                                          "demo_masa_ood.yaml"]


def test_a_command_shows_the_package_logs_as_plain_lines_and_removes_its_handler(
        capsys: pytest.CaptureFixture[str]) -> None:
    from sde_search import console

    logger = logging.getLogger("sde_search")
    before = (list(logger.handlers), logger.level, logger.propagate)
    for _ in range(2):  # a second command does not add a second handler
        assert main(["--task", str(EXAMPLES[0]), "--check"]) == 0
        assert (list(logger.handlers), logger.level, logger.propagate) == before
    capsys.readouterr()
    with console.shown():
        logging.getLogger("sde_search.x").info("shown %s", "once")
        logging.getLogger("sde_search.x").debug("not shown")
        logging.getLogger("sde_search.x").error("on stderr")
    logging.getLogger("sde_search.x").info("after the command: not shown")
    out, err = capsys.readouterr()
    assert (out, err) == ("shown once\n", "on stderr\n")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_check_on_each_example(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", str(path), "--check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    sections = _sections(out)
    assert list(sections) == ["paper_baseline", "es_sde"]
    for name, text in sections.items():
        assert "-- round trip: ok;" in text, (name, text)
    assert "== paper_baseline: last/exclude/natural/placeholder/text/none" in out
    assert "== es_sde: first/exclude/lines/placeholder/text/none" in out
    assert re.search(r"^space quick\.yaml: 72 designs; budget \d+ trials", out, flags=re.MULTILINE)


def test_check_shows_an_extra_design(capsys: pytest.CaptureFixture[str]) -> None:
    masa = str(ROOT / "examples" / "demo_masa.yaml")
    assert main(["--task", masa, "--check", "--design", "output_format=json,reasoning=cot"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert list(sections) == ["paper_baseline", "es_sde", "first/exclude/json/placeholder/text/cot"]
    shown = sections["first/exclude/json/placeholder/text/cot"]
    assert re.search(r"\{\"aspect\": \"[a-z]+ [a-z]+\", \"rationale\": ", shown)
    assert "with the fields aspect, rationale, label" in shown
    assert "-- round trip: ok;" in shown


@pytest.mark.parametrize(
    ("design", "message"),
    [("output_format=xml", "design.output_format: 'xml' is not one of natural, lines, json"),
     ("es-sde", "not a preset (es_sde, paper_baseline, ew_sde)"),
     ("colour=red", "design key 'colour': allowed keys are")],
)
def test_bad_design_exits_2(design: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    masa = str(ROOT / "examples" / "demo_masa.yaml")
    assert main(["--task", masa, "--check", "--design", design]) == 2
    out, err = capsys.readouterr()
    assert f"error: --design '{design}': " in err
    assert message in err
    assert out == ""


def test_bad_set_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    masa = str(ROOT / "examples" / "demo_masa.yaml")
    assert main(["--task", masa, "--check", "--set", "train.lr=1e-4"]) == 2
    assert "train.lr: '1e-4' is read as a string by YAML" in capsys.readouterr().err


def test_space_override_through_set(capsys: pytest.CaptureFixture[str]) -> None:
    masa = str(ROOT / "examples" / "demo_masa.yaml")
    assert main(["--task", masa, "--check", "--set", "space.budget.num_samples=5"]) == 0
    assert "budget 5 trials" in capsys.readouterr().out


def test_missing_task_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["--task", str(missing), "--check"]) == 2
    assert f"error: {missing}: file not found" in capsys.readouterr().err


def test_task_without_a_space_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "examples" / "demo_entities.yaml").read_text(encoding="utf-8")
    text = text.replace("search_space: ../search_spaces/quick.yaml\n", "")
    text = text.replace("root: data/entities", f"root: {ROOT / 'examples' / 'data' / 'entities'}")
    path = tmp_path / "task.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["--task", str(path), "--check"]) == 2
    assert "search_space: no search space given (set it or pass --space)" in capsys.readouterr().err
    assert main(["--task", str(path), "--check", "--space", str(ROOT / "search_spaces" / "quick.yaml")]) == 0


def test_console_entry_point_check() -> None:
    proc = subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", "examples/demo_events.yaml", "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("-- round trip: ok;") == 2


def test_unreachable_tracking_server_fails_before_anything(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", str(ROOT / "examples/demo_masa.yaml"),
                           "--runs-dir", str(tmp_path / "runs"), "--tracking-uri", f"http://127.0.0.1:{port}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"--tracking-uri http://127.0.0.1:{port}: MLflow server not reachable" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_version_names_the_tool_and_its_libraries(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert re.match(r"sde-search \d+\.\d+\.\d+ \(ray \S+, optuna \S+, mlflow \S+, torch \S+", out), out


@pytest.mark.slow
def test_sigterm_to_ui_stops_the_whole_mlflow_server(tmp_path: Path) -> None:
    """``sde-search ui`` passes SIGTERM on to the MLflow server and its workers: nothing keeps listening."""
    import signal
    import socket
    import time

    import psutil
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("x")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sde_search.cli", "ui", "--runs-dir", str(tmp_path), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the MLflow UI never listened: " + (proc.communicate()[0] or "")[-2000:])
    server = psutil.Process(proc.pid).children(recursive=True)
    assert server, "the UI runs no server process"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0 and "MLflow UI stopped" in out, out[-2000:]
    gone, alive = psutil.wait_procs(server, timeout=15)
    assert not alive, [p.cmdline() for p in alive]
