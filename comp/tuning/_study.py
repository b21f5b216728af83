"""The study a tuning worker works on: everything a worker needs (the plan), the study's key, and opening it.

A study is keyed by what its trials' values depend on (the search space and the objective), stored in its user
attributes when it is first opened; reopening it for another space or objective is refused, since its trials
and a best_config.yaml written from the new space would no longer match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import optuna

from comp.config import Config, DataConfig
from comp.errors import ConfigError, arg
from comp.tuning._pruning import make_pruner
from comp.tuning._storage import make_storage

KEY_ATTR = "comp:study_key"
KEY_VERSION = 1  # raise when the rule below changes, so an old key is told from a changed study
# Not keyed: where and how fast a trial runs rather than what it computes (workers on several boxes share one
# study with their own devices, loaders and caches); trials never predict; the tune block enters as the space
# and the resolved direction, folds and epochs (its n_trials, timeout and pruner may change between runs); the
# metric and epochs have parts of their own.
UNKEYED = ("device", "data.num_workers", "data.cache", "data.cache_dir", "predict", "tune", "metric", "train.epochs")
# Keyed by their last part: boxes sharing a study keep the same files in different folders.
PATH_KEYS = (*(f"data.{k}" for k in DataConfig.PATH_KEYS if k != "cache_dir"), "loss.distill.teacher")
PARTS = ("space", "metric", "direction", "folds", "epochs", "config")
SEARCHED = "<searched>"
log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything a tuning worker needs (picklable: device workers receive it)."""

    base: Config
    space: dict
    out_dir: Path
    storage: str | None
    study_name: str
    direction: str
    pruner: str
    total_steps: int
    n_trials: int
    folds: list[int]
    keep_trials: bool
    timeout: float | None
    heartbeat: int
    seed: int


def open_study(plan: Plan, *, shared: bool):
    """create_study(load_if_exists=True), retried: workers starting together on an empty database race to
    create its tables and one of them loses with a duplicate-object error. Returns the study and its storage."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(6):
        try:
            storage = make_storage(plan.storage, plan.out_dir, plan.heartbeat)
            study = optuna.create_study(
                study_name=plan.study_name,
                storage=storage,
                load_if_exists=True,
                direction=plan.direction,  # type: ignore[arg-type]  # validated as maximize/minimize
                pruner=make_pruner(plan.pruner, plan.total_steps),
            )
            break
        except SQLAlchemyError:
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    check_study_key(study, plan)
    # a resumed study or another worker must not replay the first samples of the seeded sampler
    offset = len(study.get_trials(deepcopy=False)) + (os.getpid() if shared else 0)
    study.sampler = optuna.samplers.TPESampler(seed=(plan.seed + offset) % 2**31)
    return study, storage


def study_key(plan: Plan) -> dict[str, Any]:
    """What the values of a study's trials depend on, with its sha256: the search space, metric, direction, folds,
    epochs per model, and the base config without the searched keys and the ones in UNKEYED."""
    base = plan.base
    config = base.to_dict()
    for dotted in UNKEYED:
        _edit(config, dotted, None)
    for dotted in PATH_KEYS:
        _edit(config, dotted, lambda v: PurePath(v).name if isinstance(v, str) else v)
    for entry in config["models"]:
        entry.pop("epochs", None)  # in the epochs part
        if isinstance(entry.get("pretrained"), str):
            entry["pretrained"] = PurePath(entry["pretrained"]).name
    for dotted in plan.space:  # every trial sets these: their base values do not matter
        _edit(config, dotted, lambda v: SEARCHED, create=True)
    epochs = {m.model_id: base.train_for(m).epochs for m in base.models}
    parts = {
        "space": {k: _canonical_spec(spec) for k, spec in plan.space.items()},
        "metric": base.metric,
        "direction": plan.direction,
        "folds": sorted(set(plan.folds)),
        "epochs": next(iter(epochs.values())) if len(set(epochs.values())) == 1 else epochs,
        "config": config,
    }
    parts = json.loads(json.dumps(parts, default=str))  # as the storage will hand it back
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"version": KEY_VERSION, "sha256": digest, "parts": parts}


def check_study_key(study: optuna.Study, plan: Plan) -> None:
    """Refuse a study made for another space or objective; key a new one (or one made before studies were keyed)."""
    key = study_key(plan)
    stored = study.user_attrs.get(KEY_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            log.info("study '%s' has no key yet: keyed by this run's space and objective from now on", plan.study_name)
        study.set_user_attr(KEY_ATTR, key)
        return
    if isinstance(stored, dict) and stored.get("sha256") == key["sha256"]:
        return
    if isinstance(stored, dict) and stored.get("version") == KEY_VERSION:
        changes = _changes(stored.get("parts", {}), key["parts"]) or ["its key differs"]
    else:
        changes = ["it was keyed by another version of comp"]
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    where = plan.storage or str(plan.out_dir / "study.db")
    if plan.storage is None:
        other = arg("out= or study_name=", "--out or --study-name")
    else:
        other = arg("study_name=", "--study-name")
    raise ConfigError(
        f"study '{plan.study_name}' in {where} was made for another search space or objective ({shown}), so its "
        f"trials would not match best_config.yaml; use another {other} to start a new study, or restore the old "
        "settings to resume it"
    )


def _canonical_spec(spec: dict) -> dict:
    """One spelling per range: 1 and 1.0 are the same float bound, an int range without step has step 1."""
    if spec["type"] == "categorical":
        return {"type": "categorical", "choices": list(spec["choices"])}
    cast = int if spec["type"] == "int" else float
    out = {"type": spec["type"], "low": cast(spec["low"]), "high": cast(spec["high"]), "log": bool(spec.get("log"))}
    step = spec.get("step", 1 if spec["type"] == "int" else None)
    if step is not None:
        out["step"] = cast(step)
    return out


def _edit(raw: Any, dotted: str, fn, *, create: bool = False) -> None:
    """Replace the value at a dotted key of a plain config by ``fn(value)``, or drop it when ``fn`` is None."""
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, list):
        node[int(last)] = fn(node[int(last)])
    elif isinstance(node, dict) and (last in node or create):
        if fn is None:
            node.pop(last, None)
        else:
            node[last] = fn(node.get(last))


def _changes(old: dict, new: dict) -> list[str]:
    """'what: old -> new' for each difference between the parts of two keys, by dotted name."""
    out = []
    for part in PARTS:
        a, b = old.get(part), new.get(part)
        if a == b:
            continue
        if part == "space" and isinstance(a, dict) and isinstance(b, dict):
            fa, fb = _flat_space(a, b), _flat_space(b, a)
            out += [
                f"tune.space.{k}: {_show(fa.get(k))} -> {_show(fb.get(k))}" for k in fa | fb if fa.get(k) != fb.get(k)
            ]
        elif part == "config" and isinstance(a, dict) and isinstance(b, dict):
            fa, fb = _flat(a), _flat(b)
            out += [
                f"{k}: {_show(fa.get(k))} -> {_show(fb.get(k))}"
                for k in fa | fb
                if fa.get(k) != fb.get(k) and SEARCHED not in (fa.get(k), fb.get(k))  # the space part names those
            ]
        else:
            out.append(f"{part}: {_show(a)} -> {_show(b)}")
    return out


def _flat_space(space: dict, other: dict) -> dict[str, Any]:
    """A searched key's range field by field where ``other`` searches it too, else the whole range."""
    return {
        f"{key}.{field}" if key in other else key: value
        for key, spec in space.items()
        for field, value in (spec.items() if key in other else [("", spec)])
    }


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested dict/list, in order."""
    if isinstance(node, dict | list) and node:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        return {k: v for key, sub in items for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _show(value: Any) -> str:
    text = "(none)" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
