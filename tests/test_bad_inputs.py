"""The bad-input suite: every broken task, space or data file ends the command with exit 2 and a message.

Every YAML in ``tests/bad/`` holds one mistake and names the message it must produce on its first line,
``# expect: <substring of the message>`` (read in the file's own encoding: UTF-16 files included). Task files run
as ``sde-search --task FILE --check``; files in ``tests/bad/spaces/`` as
``sde-search --task tests/bad/ok/task.yaml --space FILE --check``. ``tests/bad/data/`` holds the broken data files
the task fixtures point at, ``tests/bad/plugins/`` the broken plugins (put on PYTHONPATH for every run),
``tests/bad/designs/`` broken ``--design`` files (run against the control task) and ``tests/bad/ok/`` the valid
control pair. Mistakes that cannot be a file of their own (a task file that does not
exist, a task path that is a folder, an environment with no visible GPU) are the ``EXTRA`` cases.

Each case must: exit 2, print no traceback and nothing on stdout, print only ``error: `` lines, name the file and
contain its expected message. The same mistakes given to the real search command (no ``--check``) must leave no run
directory and no MLflow store behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sde_search import config

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "bad"
OK_TASK = BAD / "ok" / "task.yaml"
OK_SPACE = BAD / "ok" / "space.yaml"
WORKERS = max(2, min(4, os.cpu_count() or 2))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _expect(path: Path) -> str:
    data = path.read_bytes()
    utf32 = data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")  # its mark starts like UTF-16's: test it first
    utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
    text = data.decode("utf-32" if utf32 else "utf-16" if utf16 else "utf-8", "replace")
    first = text.split("\n", 1)[0]
    assert first.startswith("# expect: "), f"{path}: the first line must be '# expect: <message>'"
    return first.removeprefix("# expect: ").strip()


@dataclass(frozen=True)
class Case:
    """One bad input: the command-line arguments (without ``--check``) and what stderr must contain."""

    id: str
    args: tuple[str, ...]
    expect: str
    names: str  # the file name the message must mention
    env: dict[str, str] = field(default_factory=dict)


def _fixture_case(path: Path) -> Case:
    space = ("--task", _rel(OK_TASK), "--space", _rel(path))
    args = space if path.parent.name == "spaces" else ("--task", _rel(path))
    return Case(str(path.relative_to(BAD)), args, _expect(path), path.name)


FIXTURES = sorted(BAD.glob("*.yaml")) + sorted((BAD / "spaces").glob("*.yaml"))
EXTRA = [
    Case("extra:task_file_missing", ("--task", "tests/bad/no_such_task.yaml"), "no_such_task.yaml: file not found",
         "no_such_task.yaml"),
    Case("extra:space_file_missing", ("--task", _rel(OK_TASK), "--space", "tests/bad/spaces/no_such_space.yaml"),
         "no_such_space.yaml: file not found", "no_such_space.yaml"),
    Case("extra:task_is_a_folder", ("--task", "tests/bad/plugins"), "plugins: is a folder, not a YAML file",
         "tests/bad/plugins"),
    Case("extra:gpu_none_visible", ("--task", _rel(OK_TASK), "--space", "tests/bad/spaces/gpu_too_many.yaml"),
         "resources.gpu: 64 per trial, but 0 GPUs are visible on this machine (counted in /proc/driver/nvidia/gpus, "
         "CUDA_VISIBLE_DEVICES='') (allowed: 0, this machine has no usable GPU)", "gpu_too_many.yaml",
         {"CUDA_VISIBLE_DEVICES": ""}),
    Case("extra:hf_dataset_unavailable",
         ("--task", _rel(OK_TASK), "--set", "data.train=hf:sde_no_such_org/no_such_dataset"),
         "data.train: hf:sde_no_such_org/no_such_dataset could not be loaded (", "task.yaml",
         {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}),
    Case("extra:set_concurrency_zero", ("--task", _rel(OK_TASK), "--set", "space.budget.max_concurrent=0"),
         "budget.max_concurrent: Input should be greater than or equal to 1 (got 0)", "space.yaml"),
    *(Case(f"extra:designs/{p.name}", ("--task", _rel(OK_TASK), "--design", _rel(p)), _expect(p), p.name)
      for p in sorted((BAD / "designs").glob("*.yaml"))),
]
CASES = [_fixture_case(p) for p in FIXTURES] + EXTRA

# Every kind of mistake the issue lists, and the cases that cover it.
CATEGORIES = {
    "unknown or misspelled keys": ["unknown_top_key.yaml", "nested_key_typo.yaml", "labels_key_typo.yaml",
                                   "model_key_typo.yaml", "spaces/unknown_key.yaml", "spaces/budget_key_typo.yaml",
                                   "spaces/range_typo.yaml", "spaces/unknown_dimension.yaml"],
    "wrong types": ["epochs_word.yaml", "train_scalar.yaml", "slots_string.yaml", "batch_size_float.yaml",
                    "missing_eval_id.yaml", "spaces/design_scalar.yaml", "spaces/rank_float_range.yaml"],
    "YAML 1.1 booleans": ["objective_no.yaml", "slot_on.yaml", "name_yes.yaml", "spaces/unmentioned_no.yaml",
                          "spaces/instruction_off.yaml"],
    "1e-4 read as a string": ["lr_string.yaml", "spaces/lr_string.yaml", "spaces/range_low_string.yaml"],
    "missing or empty files": ["missing_data.yaml", "empty_data.yaml", "empty_task.yaml", "missing_search_space.yaml",
                               "data_folder.yaml", "spaces/empty.yaml", "extra:task_file_missing",
                               "extra:space_file_missing", "extra:task_is_a_folder",
                               "extra:hf_dataset_unavailable"],
    "unreadable encodings": ["not_utf8.yaml", "utf16_task.yaml", "data_latin1.yaml", "data_utf16.yaml",
                             "spaces/not_utf8.yaml"],
    "records with labels outside the schema": ["label_outside.yaml", "label_after_sample.yaml", "slot_outside.yaml",
                                               "entity_type_outside.yaml"],
    "mismatched OOD schema": ["ood_mismatch.yaml", "ood_default_mismatch.yaml", "objective_ood_without_ood_set.yaml"],
    "YAML nesting, alias and number limits": ["yaml_billion_laughs.yaml", "spaces/billion_laughs.yaml",
                                              "extra:designs/billion_laughs.yaml", "yaml_recursive_alias.yaml",
                                              "data_nan.yaml", "data_overflow.yaml"],
    "duplicate YAML keys": ["duplicate_key_data.yaml", "duplicate_key_nested.yaml", "duplicate_key_flow.yaml",
                            "spaces/duplicate_key.yaml", "extra:designs/duplicate_key.yaml", "yaml_two_documents.yaml"],
    "plugin raising while reading": ["plugin_reader_raises.yaml", "plugin_reader_exits.yaml",
                                     "plugin_not_a_record.yaml", "plugin_answer_raises.yaml",
                                     "plugin_labels_raise.yaml"],
    "duplicate ids": ["duplicate_ids.yaml"],
    "CoT without rationales": ["cot_without_rationales.yaml"],
    "impossible resources": ["spaces/gpu_too_many.yaml", "extra:gpu_none_visible", "spaces/gpu_fraction.yaml",
                             "spaces/cpu_negative.yaml", "load_in_4bit_cpu.yaml"],
    "concurrency 0": ["spaces/concurrency_zero.yaml", "spaces/num_samples_zero.yaml", "extra:set_concurrency_zero"],
    "plugin missing or raising on import": ["plugin_missing.yaml", "plugin_raises.yaml",
                                            "plugin_dependency_missing.yaml", "plugin_duplicate_type.yaml"],
    "broken data rows": ["bad_json_line.yaml", "span_mismatch.yaml", "rationales_string.yaml", "text_not_string.yaml",
                         "entities_not_list.yaml", "json_array.yaml", "csv_ragged.yaml", "csv_bad_json_cell.yaml"],
    "inconsistent settings": ["instruction_none_ood.yaml", "numbers_unknown_label.yaml", "numbers_shared_code.yaml",
                              "template_placeholder.yaml", "train_is_eval.yaml", "test_is_eval.yaml",
                              "duplicate_slots.yaml", "unknown_type.yaml", "name_pattern.yaml", "invalid_yaml.yaml",
                              "top_level_list.yaml", "spaces/top_level_list.yaml", "spaces/startup_trials.yaml",
                              "spaces/asha_grace_too_long.yaml",
                              "spaces/output_format_xml.yaml", "spaces/unknown_baseline.yaml"],
    "--check passes, the run fails": ["spaces/range_log_step.yaml", "spaces/range_step_negative.yaml",
                                      "spaces/range_int_log_step.yaml", "spaces/range_int_step_fraction.yaml",
                                      "spaces/range_int_step_zero.yaml", "spaces/brute_force_float.yaml",
                                      "spaces/sampler_seed_negative.yaml", "train_seed_negative.yaml",
                                      "data_seed_huge.yaml", "target_modules_unknown.yaml",
                                      "spaces/target_modules_unknown.yaml", "model_folder_missing.yaml",
                                      "model_not_cached.yaml", "model_folder_no_config.yaml", "gguf_file_missing.yaml",
                                      "tiny_heads_indivisible.yaml", "tiny_head_dim_odd.yaml",
                                      "template_format_spec.yaml", "template_conversion.yaml", "tracking_ftp.yaml",
                                      "tracking_sqlite_missing_dir.yaml", "round_trip_failed.yaml"],
    "semantic mistakes accepted silently": ["labels_empty_value.yaml", "labels_duplicate_value.yaml",
                                            "labels_case_only.yaml", "labels_space_only.yaml",
                                            "unmentioned_is_value.yaml", "synonym_is_label.yaml", "synonym_shared.yaml",
                                            "synonym_unknown_label.yaml", "slots_empty_entry.yaml",
                                            "slots_case_only.yaml", "ood_slots_empty.yaml",
                                            "entity_offset_negative.yaml", "entity_offset_bool.yaml",
                                            "entity_span_empty.yaml", "entity_end_without_start.yaml",
                                            "spaces/cpu_too_many.yaml", "hf_empty_id.yaml",
                                            "spaces/range_low_above_high.yaml", "utf32_task.yaml",
                                            "record_id_null.yaml"],
    "kappa weights that do not fit the labels": ["kappa_weights_shape.yaml", "kappa_weights_entities.yaml",
                                                 "kappa_weights_diagonal.yaml"],
}


def _env(extra: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(BAD / "plugins"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}


def _run(args: tuple[str, ...] | list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sde_search.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=_env(env))


@pytest.fixture(scope="module")
def bad_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """Runs every case with ``--check``, each in a fresh interpreter, a few at a time."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        runs = pool.map(lambda c: _run([*c.args, "--check"], c.env), CASES)
        return {c.id: run for c, run in zip(CASES, runs, strict=True)}


def test_the_cases_are_many_distinct_and_cover_every_category() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    expectations = [(c.args, c.expect) for c in CASES]
    assert len(set(expectations)) == len(expectations), "two cases expect the same message"
    categorised = [case for cases in CATEGORIES.values() for case in cases]
    assert sorted(set(categorised) - set(ids)) == [], "CATEGORIES names a case that does not exist"
    assert sorted(set(ids) - set(categorised)) == [], "a case is in no category"
    assert all(len(cases) >= 1 for cases in CATEGORIES.values())


def test_the_control_pair_is_valid() -> None:
    run = _run(["--task", _rel(OK_TASK), "--check"], {})
    assert run.returncode == 0, run.stderr
    assert "round trip: ok" in run.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, bad_runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = bad_runs[case.id]
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 2, run.stderr
    assert case.expect in run.stderr, run.stderr
    assert case.names in run.stderr, run.stderr
    assert run.stderr and all(line.startswith("error: ") for line in run.stderr.splitlines()), run.stderr
    assert run.stdout == ""


NO_CHECK = ["round_trip_failed.yaml", "tracking_ftp.yaml", "spaces/cpu_too_many.yaml", "target_modules_unknown.yaml",
            "spaces/gpu_too_many.yaml", "spaces/concurrency_zero.yaml", "missing_data.yaml", "plugin_raises.yaml",
            "cot_without_rationales.yaml", "ood_mismatch.yaml", "load_in_4bit_cpu.yaml", "extra:gpu_none_visible"]


def test_the_search_command_leaves_no_run_behind(tmp_path: Path) -> None:
    """The real search (no ``--check``) stops at the same mistakes before creating a run folder or an MLflow run."""
    cases = [c for c in CASES if c.id in NO_CHECK]
    assert len(cases) == len(NO_CHECK)
    runs_dir = tmp_path / "runs"

    def search(case: Case) -> subprocess.CompletedProcess[str]:
        return _run([*case.args, "--runs-dir", str(runs_dir), "--name", "must-not-exist"], case.env)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        runs = list(pool.map(search, cases))
    for case, run in zip(cases, runs, strict=True):
        assert run.returncode == 2, (case.id, run.stderr)
        assert "Traceback" not in run.stderr and case.expect in run.stderr, (case.id, run.stderr)
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []
    assert list(tmp_path.rglob("mlflow.db")) == [] and list(tmp_path.rglob("run.json")) == []
    assert not (ROOT / "runs" / "must-not-exist").exists()


# --- visible GPUs (in process) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("listed", "expected"), [
    (None, 2), ("", 0), ("0", 1), ("1,0", 2), ("0,1,2", 2), ("-1", 0), ("0,-1,1", 1), ("3,0", 0),
    ("GPU-1234abcd", 1), (" 0 , 1 ", 2)])
def test_visible_gpus_honours_cuda_visible_devices(listed: str | None, expected: int, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (gpus / bus).mkdir(parents=True)
    if listed is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert config.visible_gpus(gpus) == expected


def test_no_driver_means_no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert config.visible_gpus(tmp_path / "absent") == 0
