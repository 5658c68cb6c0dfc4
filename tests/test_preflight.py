"""What ``--check`` now finds before a run would (issue 16, classes 4 and 7), in process and fast.

The same mistakes as files, end to end, are in ``test_bad_inputs.py``; these tests cover what a fixture cannot
(an environment variable, a model folder with its tokenizer, notes on stdout) and pin the checks to what Optuna,
numpy and the tiny model's layers actually accept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sde_search import cli, preflight, render_check, tasks
from sde_search.config import ConfigError, Range, SpaceConfig, load_space, load_task

ROOT = Path(__file__).resolve().parents[1]
MASA_TRAIN = ROOT / "tests" / "masa_fixed" / "train.jsonl"
OK_TASK = ROOT / "tests" / "bad" / "ok" / "task.yaml"
OK_SPACE = ROOT / "tests" / "bad" / "ok" / "space.yaml"
LABELS = ("labels: {slots: [food, drinks, price, staff], ood_slots: [parking, noise, decor, location], "
          "values: [positive, negative, neutral], unmentioned: unmentioned}\n")


def _task(folder: Path, extra: str = "", labels: str = LABELS, rows: list[str] | None = None) -> Path:
    """A MASA task in ``folder`` (20 training records of the example data unless ``rows`` are given)."""
    lines = MASA_TRAIN.read_text(encoding="utf-8").splitlines()
    (folder / "train.jsonl").write_text("\n".join(rows or lines[:20]) + "\n", encoding="utf-8")
    (folder / "dev.jsonl").write_text("\n".join(lines[20:30]) + "\n", encoding="utf-8")
    path = folder / "task.yaml"
    head = "name: t\ntype: aspect_sentiment\ndata: {train: train.jsonl, eval_id: dev.jsonl}\n"
    path.write_text(head + labels + extra, encoding="utf-8")
    return path


# --- Optuna, numpy: what the config accepts, they accept ---------------------------------------------------------


RANGES = [
    {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True, "step": 1.0e-4},
    {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    {"type": "float", "low": 0.0, "high": 0.5, "step": -0.1},
    {"type": "float", "low": 0.0, "high": 0.5, "step": 0.0},
    {"type": "int", "low": 4, "high": 16, "log": True},
    {"type": "int", "low": 4, "high": 16, "log": True, "step": 1},
    {"type": "int", "low": 4, "high": 16, "log": True, "step": 2},
    {"type": "int", "low": 4, "high": 16, "step": 4},
    {"type": "int", "low": 4, "high": 16, "step": -1},
]


@pytest.mark.parametrize("raw", RANGES, ids=[json.dumps(r) for r in RANGES])
def test_a_range_is_accepted_exactly_when_optuna_accepts_it(raw: dict) -> None:
    from optuna.distributions import FloatDistribution, IntDistribution

    build = IntDistribution if raw["type"] == "int" else FloatDistribution
    kwargs = {k: raw[k] for k in ("low", "high", "log", "step") if k in raw}
    try:
        build(**kwargs)
        optuna_ok = True
    except ValueError:
        optuna_ok = False
    try:
        Range.model_validate(raw).distribution()
        ours = True
    except ValueError:  # pydantic's ValidationError is a ValueError
        ours = False
    assert ours == optuna_ok


def test_an_int_step_that_optuna_would_not_see_is_refused_too() -> None:
    """``step: 0`` used to become 1 and ``step: 0.5`` became 0: both are mistakes, not steps."""
    for step in (0, 0.5):
        with pytest.raises(ValueError, match="step"):
            Range.model_validate({"type": "int", "low": 2, "high": 6, "step": step})


@pytest.mark.parametrize("seed", [-1, 0, 2**32 - 1, 2**32])
def test_seeds_are_accepted_exactly_when_numpy_accepts_them(seed: int) -> None:
    try:
        np.random.RandomState(seed)
        numpy_ok = True
    except ValueError:
        numpy_ok = False
    for key in ("sampler", "train"):
        raw = {"sampler": {"seed": seed}} if key == "sampler" else {"train": {"seed": [seed]}}
        try:
            space = SpaceConfig.model_validate(raw)
            ok = key == "sampler" or not _train_problems(space)
        except ValueError:
            ok = False
        assert ok == numpy_ok, key


def _train_problems(space: SpaceConfig) -> list[str]:
    from sde_search.config.checks import check_space

    return check_space(space, Path("space.yaml"))


@pytest.mark.filterwarnings("ignore:BruteForceSampler is experimental")
def test_brute_force_samples_a_stepped_float_range() -> None:
    """The fix for a float range under brute_force (a step) is one Optuna's sampler takes."""
    import optuna

    space = SpaceConfig.model_validate({"sampler": {"name": "brute_force"},
                                        "train": {"lr": {"type": "float", "low": 0.001, "high": 0.003,
                                                         "step": 0.001}}})
    assert _train_problems(space) == []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.BruteForceSampler(seed=0))
    lr = study.ask({"lr": space.train["lr"].distribution()}).params["lr"]
    assert any(lr == pytest.approx(v) for v in (0.001, 0.002, 0.003))


# --- LoRA target modules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "ok"), [
    ("all-linear", True), (["q_proj", "v_proj"], True), (["self_attn.q_proj"], True), (["layers.1.mlp.up_proj"], True),
    (".*q_proj", True), ("model.*(q|v)_proj", True),
    (["qkv_proj"], False), (["input_layernorm"], False), (["lm_head"], False), (["layers.9.mlp.up_proj"], False),
    ("q_proj", False), ("(q|v)_proj", False), ("[", False)])
def test_tiny_target_modules_follow_peft_matching(target: str | list[str], ok: bool) -> None:
    """peft: a list entry is a whole name or its dotted suffix; a string is a regex over whole names."""
    problems = preflight.target_problems(target, preflight.tiny_info(2), tiny=True)
    assert (problems == []) == ok, problems


def test_target_modules_of_a_known_model_type_and_an_unknown_one() -> None:
    llama = preflight.ModelInfo("llama", None, preflight.LORA_LEAVES["llama"], 2048)
    assert preflight.target_problems(["q_proj", "embed_tokens"], llama, tiny=False) == []
    assert "is not a layer LoRA can adapt in a llama model" in preflight.target_problems(["c_attn"], llama,
                                                                                        tiny=False)[0]
    assert "matches no module" in preflight.target_problems("q_proj", llama, tiny=False)[0]
    unknown = preflight.ModelInfo("mamba", None, None, None)
    assert preflight.target_problems(["anything"], unknown, tiny=False) == []


@pytest.mark.slow
def test_the_tiny_layer_names_are_those_of_the_built_model() -> None:
    """preflight lists the tiny model's layers without building it: they must match what model.py builds."""
    import torch

    from sde_search.model import build_model

    task = load_task(OK_TASK, ["model.layers=3"])
    model, _, _ = build_model(task)
    linear = tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert sorted(linear) == sorted(preflight.tiny_info(3).names or ())
    assert model.config.max_position_embeddings == preflight.TINY_POSITIONS


# --- models, tracking stores -----------------------------------------------------------------------------------------


def test_a_model_in_the_hub_cache_is_found_and_its_type_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "hub" / "models--org--small" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1024}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder, why = preflight.model_location("org/small", tmp_path)
    assert folder == snapshot and why == ""
    info, _ = preflight.folder_info(snapshot)
    assert info is not None and info.kind == "gpt2" and info.context == 1024 and "c_attn" in (info.leaves or ())
    assert preflight.model_location("org/other", tmp_path)[0] is None


@pytest.mark.parametrize(("uri", "fragment"), [
    ("ftp://example.org/x", "no tracking store for ftp://"),
    ("sqlite:////no/such/folder/mlflow.db", "the folder /no/such/folder does not exist"),
    ("sqlite://", "in-memory"),
    ("sqlite:///:memory:", "in-memory"),
    ("databricks-uc", "a model registry"),
    ("s3://bucket/mlruns", "no tracking store for s3://"),
])
def test_tracking_uris_mlflow_cannot_open(uri: str, fragment: str) -> None:
    problems = preflight.tracking_problems(uri)
    assert len(problems) == 1 and fragment in problems[0]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.org", "databricks",
                                 "postgresql+psycopg2://u@h/db", "mysql://u@h/db", "mssql://u@h/db"])
def test_tracking_uris_mlflow_opens(uri: str) -> None:
    assert preflight.tracking_problems(uri) == []


def test_sqlite_paths_resolve_like_mlflow(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert preflight.tracking_problems(f"sqlite:///{tmp_path}/sub/mlflow.db") == []  # four slashes: absolute
    assert preflight.tracking_problems("sqlite:///sub/mlflow.db", cwd=tmp_path) == []  # three: relative
    assert "does not exist" in preflight.tracking_problems("sqlite:///nope/mlflow.db", cwd=tmp_path)[0]
    assert "is a folder" in preflight.tracking_problems(f"sqlite:///{tmp_path}/sub")[0]


def test_a_file_store_needs_mlflows_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert "MLFLOW_ALLOW_FILE_STORE=true" in preflight.tracking_problems(f"file://{tmp_path}")[0]
    assert "MLFLOW_ALLOW_FILE_STORE=true" in preflight.tracking_problems(str(tmp_path / "mlruns"))[0]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert preflight.tracking_problems(f"file://{tmp_path}") == []


def test_check_refuses_a_tracking_uri_given_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--task", str(OK_TASK), "--check", "--tracking-uri", "ftp://example.org/x"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --tracking-uri ftp://example.org/x: MLflow has no tracking store")


# --- records, templates ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "fragment"), [
    ({"type": "person", "span": "Ada", "start": 3, "end": 0}, "lie outside the text"),
    ({"type": "person", "span": "Ada", "start": 0, "end": 99}, "lie outside the text"),
    ({"type": "person", "span": "Ada", "start": 0}, "give both start and end"),
    ({"type": "person", "span": "  ", "start": 3, "end": 5}, "an empty span"),
    ({"type": "person", "span": "Ada", "start": 0.0, "end": 3}, "must be whole numbers"),
])
def test_span_offsets_must_locate_the_span(item: dict, fragment: str) -> None:
    with pytest.raises((TypeError, ValueError), match=fragment):
        tasks.Entities().from_json({"id": "e1", "text": "Ada drew a sword.", "entities": [item]})
    good = {"type": "person", "span": "Ada", "start": 0, "end": 3}
    assert tasks.Entities().from_json({"id": 7, "text": "Ada drew a sword.", "entities": [good]}).id == "7"


@pytest.mark.parametrize("rid", [None, True, "", " ", [1], {"a": 1}])
def test_record_ids_must_be_strings_or_whole_numbers(rid: object) -> None:
    with pytest.raises(TypeError, match="'id' must be a non-empty string or a whole number"):
        tasks.AspectSentiment().from_json({"id": rid, "text": "Good.", "labels": {"food": "positive"}})


@pytest.mark.parametrize(("template", "ok"), [
    ("{slots} {labels} {format}", True), ("{slots:>40} {labels!r}", True), ("{slots:d}", False),
    ("{slots!z}", False), ("{slots:{labels}}", False)])
def test_templates_are_filled_in_as_the_renderer_does(template: str, ok: bool) -> None:
    assert (preflight.template_fill_problem(template) == "") == ok


# --- notes on stdout and the long-record rule ------------------------------------------------------------------------


def test_ood_slots_shared_with_id_slots_are_allowed_with_a_note(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    labels = LABELS.replace("ood_slots: [parking,", "ood_slots: [food, parking,")
    path = _task(tmp_path, f"search_space: {OK_SPACE}\n", labels=labels)
    assert cli.main(["--task", str(path), "--check"]) == 0
    assert "note: labels.ood_slots share ['food'] with labels.slots" in capsys.readouterr().out


def _long_rows(n_long: int, words: int) -> list[str]:
    lines = MASA_TRAIN.read_text(encoding="utf-8").splitlines()[:20]
    rows = [json.loads(line) for line in lines]
    for row in rows[:n_long]:
        row["text"] = " ".join(["great pasta"] * words)
    return [json.dumps(row) for row in rows]


def test_samples_past_the_tiny_context_are_a_note_not_an_error(tmp_path: Path) -> None:
    path = _task(tmp_path, rows=_long_rows(2, 400))  # ~4400 bytes each, past 4096 positions
    task, space = load_task(path), load_space(OK_SPACE)
    assert render_check.problems(task, space) == []
    note = [n for n in render_check.notes(task, space) if "positions" in n]
    assert len(note) == 1 and note[0].startswith("2 of 20 training samples are longer than the model's 4096 positions")
    assert "does not truncate" in note[0]


def _model_folder(folder: Path, model_type: str, context: int) -> None:
    """A model folder with config.json and a word-level tokenizer.json (enough to count tokens, never loaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "max_position_embeddings": context}))
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


@pytest.mark.parametrize(("model_type", "fails"), [("opt", True), ("llama", False)])
def test_samples_past_a_learned_position_table_fail_the_check(tmp_path: Path, model_type: str, fails: bool) -> None:
    _model_folder(tmp_path / "model", model_type, 256)
    path = _task(tmp_path, "model: {name: model}\n", rows=_long_rows(3, 200))
    task, space = load_task(path), load_space(OK_SPACE)
    problems, notes = render_check.problems(task, space), render_check.notes(task, space)
    message = "3 of 20 training samples are longer than the model's 256 positions"
    if fails:
        assert len(problems) == 1 and message in problems[0] and "training would fail" in problems[0]
    else:
        assert problems == [] and any(n.startswith(message) for n in notes)


def test_a_model_type_without_known_layers_is_noted_not_refused(tmp_path: Path) -> None:
    _model_folder(tmp_path / "model", "mamba", 2048)
    path = _task(tmp_path, "model: {name: model}\ntrain: {target_modules: [in_proj]}\n")
    task = load_task(path)
    assert any("target_modules is not checked" in n for n in render_check.notes(task, load_space(OK_SPACE)))


def test_every_problem_of_a_task_is_reported_at_once(tmp_path: Path) -> None:
    labels = LABELS.replace("values: [positive, negative, neutral]", "values: [positive, negative, neutral, Neutral]")
    path = _task(tmp_path, "model: {hidden_size: 100, heads: 3}\ntracking: {uri: 'ftp://x'}\n", labels=labels)
    with pytest.raises(ConfigError) as caught:
        load_task(path)
    assert [p.split(": ", 2)[1] for p in caught.value.problems] == ["labels.values", "model", "tracking.uri"]
