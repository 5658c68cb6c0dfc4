"""Tests for sde_search.config: load_task / load_space in process.

The bad-input files end to end (``sde-search ... --check`` in a fresh interpreter) are in ``test_bad_inputs.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sde_search.config import ConfigError, SpaceConfig, check_compatible, load_space, load_task, load_task_and_space

ROOT = Path(__file__).resolve().parents[1]
MASA = ROOT / "examples" / "demo_masa.yaml"
ENTITIES = ROOT / "examples" / "demo_entities.yaml"
MASA_TRAIN = ROOT / "tests" / "masa_fixed" / "train.jsonl"


# --- load_task in process --------------------------------------------------------------------------------------------


def _write_task(folder: Path, body: str, rows: int = 30) -> Path:
    """A MASA task in ``folder`` with ``rows`` training records copied from the example data."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = MASA_TRAIN.read_text(encoding="utf-8").splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    (data / "dev.jsonl").write_text("\n".join(lines[rows:rows + 10]) + "\n", encoding="utf-8")
    path = folder / "task.yaml"
    path.write_text(body, encoding="utf-8")
    return path


_LABELS = ("labels: {slots: [food, drinks, price, staff], ood_slots: [parking, noise, decor, location], "
           "values: [positive, negative, neutral], unmentioned: unmentioned}\n")
_GOOD = "name: t\ntype: aspect_sentiment\ndata: {train: data/train.jsonl, eval_id: data/dev.jsonl}\n" + _LABELS


def test_example_tasks_load() -> None:
    task = load_task(MASA, ["data.max_train=200", "data.max_eval=60", "data.max_test=null"])
    assert {k: len(v) for k, v in task.splits.items()} == {
        "train": 200, "eval_id": 60, "eval_ood": 60, "test_id": 120, "test_ood": 120}
    assert len(task.slots) == 30 and "patio music" in task.slots and "bar food" not in task.slots
    assert task.ood_slots == ("bar food", "patio drinks", "lounge music", "terrace seating", "garden service",
                              "rooftop view")
    assert all(r.slots and set(r.slots) <= set(task.slots) for r in task.splits["train"])
    assert all(r.slots and set(r.slots) <= set(task.ood_slots) for r in task.splits["eval_ood"])
    assert task.slots_for("eval_ood") == task.ood_slots and task.slots_for("test_id") == task.slots
    assert task.unmentioned == "unmentioned"
    assert load_task(ENTITIES).unmentioned == "none"


def test_set_overrides() -> None:
    task = load_task(MASA, ["train.lr=1.0e-3", "data.max_train=10", "train.epochs=3", "model.name=tiny"])
    assert task.config.train.lr == 1.0e-3
    assert task.config.train.epochs == 3
    assert len(task.splits["train"]) == 10
    assert load_task(MASA).config.train.lr == 3.0e-3  # the file itself is unchanged


def test_a_pretrained_model_gets_the_measured_preset_where_the_file_is_silent(tmp_path: Path) -> None:
    from sde_search.config import PRETRAINED_TRAIN, TrainConfig

    text = "\n".join(line for line in MASA.read_text().splitlines() if not line.startswith(("train:", "search_space:")))
    (tmp_path / "smol.yaml").write_text(text)
    root = f"data.root={MASA.parent / 'data' / 'masa'}"
    smol = load_task(tmp_path / "smol.yaml", [root, "model.name=smollm2-135m"]).config.train
    assert {k: getattr(smol, k) for k in PRETRAINED_TRAIN} == PRETRAINED_TRAIN
    assert smol.lora_rank == TrainConfig().lora_rank  # keys outside the preset keep their defaults
    assert load_task(tmp_path / "smol.yaml", [root]).config.train == TrainConfig()  # tiny: untouched
    demo = load_task(MASA, ["model.name=smollm2-135m", "train.epochs=1"]).config.train
    assert demo.epochs == 1 and demo.lr == 3.0e-3  # set on the command line / in the file: those win
    assert demo.lora_dropout == PRETRAINED_TRAIN["lora_dropout"]


@pytest.mark.parametrize(
    ("override", "message"),
    [("train.lr=1e-4", "train.lr: '1e-4' is read as a string by YAML"),
     ("train.lr", "--set 'train.lr': expected key.path=value"),
     ("train.lrr=1.0e-3", "train.lrr: unknown key; did you mean 'lr'?"),
     ("train.lr.x=1", "--set 'train.lr.x=1': lr is not a mapping"),
     ("data.max_train=0", "data.max_train: Input should be greater than or equal to 1")],
)
def test_bad_set_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_task(MASA, [override])
    assert any(message in p for p in info.value.problems), info.value.problems


def test_paths_are_relative_to_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_task(tmp_path / "project", _GOOD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    task = load_task(Path("..") / "project" / "task.yaml")
    assert task.path == path.resolve()
    assert len(task.splits["train"]) == 30 and len(task.splits["eval_id"]) == 10


def test_data_root_is_relative_to_the_yaml(tmp_path: Path) -> None:
    body = _GOOD.replace("data: {train: data/train.jsonl, eval_id: data/dev.jsonl}",
                         "data: {root: data, train: train.jsonl, eval_id: dev.jsonl}")
    task = load_task(_write_task(tmp_path, body))
    assert len(task.splits["train"]) == 30


def test_subsampling_is_deterministic_and_keeps_file_order() -> None:
    ids = [r.id for r in load_task(MASA, ["data.max_train=25"]).splits["train"]]
    assert ids == [r.id for r in load_task(MASA, ["data.max_train=25"]).splits["train"]]
    other = [r.id for r in load_task(MASA, ["data.max_train=25", "data.seed=1"]).splits["train"]]
    assert other != ids and len(other) == 25
    everything = [r.id for r in load_task(MASA, ["data.max_train=null"]).splits["train"]]
    assert len(everything) == 400
    assert [i for i in everything if i in set(ids)] == ids  # a subset, in file order
    assert ids != everything[:25]  # sampled, not truncated


def test_eval_ood_is_eval_id_read_with_the_ood_slots_only_when_asked(tmp_path: Path) -> None:
    assert "eval_ood" not in load_task(_write_task(tmp_path, _GOOD)).splits  # never derived silently
    task = load_task(_write_task(tmp_path, _GOOD), ["data.eval_ood={from: eval_id}"])
    assert [r.id for r in task.splits["eval_ood"]] == [r.id for r in task.splits["eval_id"]]
    record = task.splits["eval_ood"][0]
    assert set(task.gold(record, "eval_ood")) == {"parking", "noise", "decor", "location"}


@pytest.mark.parametrize("ood_slots", ["", "ood_slots: [food, drinks, price, staff], "], ids=["absent", "same"])
def test_no_eval_ood_without_different_ood_slots(ood_slots: str, tmp_path: Path) -> None:
    labels = "labels: {slots: [food, drinks, price, staff], " + ood_slots + "values: [positive, negative, neutral]}\n"
    path = _write_task(tmp_path, _GOOD.replace(_LABELS, labels))
    for name in ("train.jsonl", "dev.jsonl"):  # keep the in-domain aspects only
        records = [json.loads(line) for line in (tmp_path / "data" / name).read_text().splitlines()]
        for r in records:
            r["labels"] = {k: v for k, v in r["labels"].items() if k in ("food", "drinks", "price", "staff")}
        (tmp_path / "data" / name).write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    task = load_task(path)
    assert task.ood_slots == task.slots
    assert set(task.splits) == {"train", "eval_id"}


def test_several_mistakes_are_reported_together(tmp_path: Path) -> None:
    body = ("name: t\ntype: aspect_sentimen\ndata: {train: data/train.jsonl, eval_id: data/dev.jsonl}\n" + _LABELS
            + "trian: {epochs: 2}\ntrain: {epochs: twelve, lr: 1e-4}\nobjective: maybe\nmodel: {nmae: tiny}\n")
    path = _write_task(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_task(path)
    problems = info.value.problems
    expected = ["trian: unknown key; did you mean 'train'?", "train.epochs: Input should be a valid integer",
                "train.lr: '1e-4' is read as a string", "objective: Input should be 'id', 'ood', 'mean' or 'pareto'",
                "model.nmae: unknown key; did you mean 'name'?", "type: 'aspect_sentimen' is not a task type"]
    for message in expected:
        assert sum(message in p for p in problems) == 1, (message, problems)
    assert len(problems) == len(expected)
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert str(info.value) == "\n".join(problems)


def test_several_data_mistakes_are_reported_together(tmp_path: Path) -> None:
    body = _GOOD.replace("eval_id: data/dev.jsonl", "eval_id: data/empty.jsonl, test_id: data/missing.jsonl")
    path = _write_task(tmp_path, body)
    (tmp_path / "data" / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_task(path)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert "data.eval_id:" in problems[0] and "empty.jsonl holds no records" in problems[0]
    assert "data.test_id: file not found" in problems[1] and "missing.jsonl" in problems[1]


def test_bad_rows_are_capped(tmp_path: Path) -> None:
    path = _write_task(tmp_path, _GOOD)
    (tmp_path / "data" / "train.jsonl").write_text('{"id": "x", "labels": {}}\n' * 8, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_task(path)
    problems = info.value.problems
    assert sum("missing key 'text'" in p for p in problems) == 5
    assert any("... and 3 more bad rows" in p for p in problems)


def test_a_good_plugin_registers_a_task_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sde_test_plugin_ok.py").write_text(
        "from sde_search.tasks import AspectSentiment, task_type\n\n"
        "@task_type\nclass Polarity(AspectSentiment):\n    name = 'polarity_test'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    body = _GOOD.replace("type: aspect_sentiment", "type: polarity_test") + "plugins: [sde_test_plugin_ok]\n"
    task = load_task(_write_task(tmp_path / "task", body))
    assert task.kind.name == "polarity_test"


def test_a_plugin_that_fails_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sde_test_plugin_broken.py").write_text("raise RuntimeError('boom')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    body = _GOOD + "plugins: [sde_test_plugin_broken]\n"
    with pytest.raises(ConfigError, match=r"plugins: 'sde_test_plugin_broken' could not be imported "
                                          r"\(RuntimeError: boom\)"):
        load_task(_write_task(tmp_path / "task", body))


def test_plugins_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plugins: Input should be a valid list"):
        load_task(_write_task(tmp_path, _GOOD + "plugins: sde_test_plugin\n"))


# --- spaces --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), [("quick", 72), ("sde_core", 72), ("sde_full", 216), ("sde_hparams", 24),
                                            ("sde_chat", 24)])
def test_shipped_spaces_load(name: str, size: int) -> None:
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert isinstance(space, SpaceConfig)
    assert space.size() == size


def test_shipped_spaces_fit_the_masa_example() -> None:
    task = load_task(MASA)
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        check_compatible(task, load_space(path), path)


def test_space_overrides() -> None:
    space = load_space(ROOT / "search_spaces" / "quick.yaml", ["budget.num_samples=20", "design.reasoning=[none, cot]"])
    assert space.budget.num_samples == 20
    assert space.design_choices()["reasoning"] == ("none", "cot")
    assert space.size() == 144


def test_space_with_several_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("design: {output_format: [natural, xml], reasoning: [none, none]}\n"
                    "train: {lr: 1e-4, lora_rank: [4, eight], epoch: 3}\nbaselines: [es-sde]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    expected = ["design.output_format: 'xml' is not allowed", "design.reasoning: duplicate values",
                "train.lr: '1e-4' is read as a string",
                "train.lora_rank: Input should be a valid integer (got 'eight')",
                "train.epoch: unknown hyper-parameter; did you mean 'epochs'?", "baselines: 'es-sde' is not a preset"]
    for message in expected:
        assert sum(message in p for p in info.value.problems) == 1, (message, info.value.problems)
    assert len(info.value.problems) == len(expected)


def test_cot_needs_a_rationale_for_every_slot(tmp_path: Path) -> None:
    path = _write_task(tmp_path, _GOOD)
    records = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    del records[3]["rationales"]["staff"]
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    task = load_task(path)
    space_path = ROOT / "search_spaces" / "sde_full.yaml"
    check_compatible(task, load_space(ROOT / "search_spaces" / "quick.yaml", ["design.label_style=text"]),
                     space_path)  # no CoT: fine
    with pytest.raises(ConfigError) as info:
        check_compatible(task, load_space(space_path, ["design.label_style=text"]), space_path)
    assert info.value.problems == [
        f"{space_path}: design.reasoning: CoT needs 'rationales' in every training record, one per slot; "
        f"1 of 30 in data.train of {path} lack some (e.g. {records[3]['id']}: none for ['staff']); "
        "add rationales or use reasoning: none"]


def test_number_codes_must_differ(tmp_path: Path) -> None:
    body = _GOOD.replace("unmentioned: unmentioned}",
                         "unmentioned: unmentioned, numbers: {positive: 1, neutral: 0, negative: 0, unmentioned: -2}}")
    with pytest.raises(ConfigError, match=r"labels\.numbers: codes \[0\] are given to several labels"):
        load_task(_write_task(tmp_path, body))


def test_set_value_that_is_not_yaml() -> None:
    with pytest.raises(ConfigError, match=r"--set 'name=\[': the value is not a valid YAML scalar"):
        load_task(MASA, ["name=["])


def test_template_with_stray_brace(tmp_path: Path) -> None:
    body = _GOOD + 'template: {paraphrases: ["Label {slots} with {labels. {format}"]}\n'
    with pytest.raises(ConfigError, match=r"template\.paraphrases\.0: not a valid template"):
        load_task(_write_task(tmp_path, body))


@pytest.mark.parametrize(("space_sets", "expected"), [
    ([], (20, 20)),                                                     # the task's 20 epochs x 1 report
    (["train.epochs=6"], (6, 6)),                                       # the space's value wins
    (["train.epochs=[4, 8]", "train.reports_per_epoch=2"], (8, 16)),    # searched: both extremes
])
def test_report_range_reads_the_space_train_block(space_sets: list[str], expected: tuple[int, int]) -> None:
    from sde_search.config import report_range

    task = load_task(ROOT / "examples" / "demo_masa.yaml")
    space = load_space(ROOT / "search_spaces" / "quick.yaml", space_sets)
    assert report_range(task, space) == expected


def test_a_grace_period_no_trial_reaches_is_an_error_only_for_a_new_search() -> None:
    task = load_task(ROOT / "examples" / "demo_masa.yaml")
    space = load_space(ROOT / "search_spaces" / "quick.yaml", ["train.epochs=2"])
    with pytest.raises(ConfigError, match="asha.grace_period: 3 reports, but a trial makes only 2"):
        check_compatible(task, space, "quick.yaml")
    check_compatible(task, space, "quick.yaml", new_search=False)  # report / export / resume of an earlier run


@pytest.mark.parametrize("gpu", ["0.5", "2"])
def test_gpus_of_a_cluster_joined_with_address_are_not_looked_for_on_this_machine(
        gpu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--address`` trials need GPUs here; with it the cluster's count (``raynodes.check_resources``)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU here, whatever the machine has
    space = str(ROOT / "search_spaces" / "quick.yaml")
    with pytest.raises(ConfigError, match=f"resources.gpu: {gpu} per trial, but 0 GPUs are visible on this machine"):
        load_task_and_space(str(MASA), space, [f"space.resources.gpu={gpu}"])
    _, loaded, _ = load_task_and_space(str(MASA), space, [f"space.resources.gpu={gpu}"], address="127.0.0.1:6379")
    assert loaded.resources.gpu == float(gpu)
