"""``comp init``: from a competition folder to a commented config that ``comp train-folds`` takes as written."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from comp._tables import Rendered, table_frame
from comp.config import Config, apply_overrides, load_config, parse_value
from comp.config._records import TASK_DEFAULTS
from comp.data._table import load_train_table
from comp.errors import CompError
from comp.init._checks import look
from comp.init._columns import Guess
from comp.init._detect import detect
from comp.init._recipe import (
    FOLD_OVERHEAD_S,
    MAX_EPOCHS,
    MIN_EPOCHS,
    RUN_OVERHEAD_S,
    SIZES,
    Machine,
    Probe,
    backbones,
    fit_batch,
    format_s,
    image_size,
    machine,
    parse_budget,
)
from comp.init._scan import scan_folder
from comp.init._write import to_yaml
from comp.run import write_text

log = logging.getLogger(__name__)

AUGMENT = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "translate_percent": [-0.05, 0.05], "scale": [0.9, 1.1], "rotate": [-10, 10], "p": 0.5},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5},
]


@dataclass
class ModelPlan:
    name: str
    image_size: int | list[int]
    batch_size: int
    epochs: int
    epoch_s: float  # one epoch of one fold, from the probe
    probe: Probe

    def total_s(self, n_splits: int) -> float:
        return n_splits * (self.epochs * self.epoch_s + FOLD_OVERHEAD_S)


@dataclass(repr=False)
class InitResult(Rendered):
    """What ``comp init`` decided and wrote."""

    out: Path
    config: Config
    guesses: list[Guess]
    warnings: list[str]
    machine: Machine
    plans: list[ModelPlan]
    n_splits: int
    budget_s: float
    expected_s: float

    def title(self) -> str:
        return f"InitResult: {self.out}"

    def table(self) -> pd.DataFrame:
        rows = [
            {"key": g.key, "value": _short(g.value), "evidence": g.evidence, "override": g.override}
            for g in self.guesses
        ]
        return table_frame(rows, ["key", "value", "evidence", "override"])

    def recipe(self) -> list[str]:
        lines = [
            f"machine: {self.machine.name}" + (f", {self.machine.memory_gb:.0f} GiB" if self.machine.memory_gb else "")
        ]
        for p in self.plans:
            size = "x".join(map(str, p.image_size)) if isinstance(p.image_size, list) else f"{p.image_size}"
            lines.append(
                f"{p.name} @ {size} px, batch {p.batch_size}: probe {p.probe.step_s * 1000:.0f} ms/step, "
                f"{p.probe.decode_s * 1000:.1f} ms/image to decode -> {format_s(p.epoch_s)}/epoch/fold, "
                f"{p.epochs} epochs x {self.n_splits} folds = {format_s(p.total_s(self.n_splits))}"
            )
        lines.append(f"expected wall time: {format_s(self.expected_s)} (budget {format_s(self.budget_s)})")
        return lines


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 48 else text[:45] + "..."


def _forced(overrides: Iterable[str]) -> dict[str, Any]:
    out = {}
    for item in overrides:
        if "=" not in item:
            raise CompError(f"--set expects key=value, got {item!r} (e.g. --set data.label_column=label)")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def _relative(data: dict[str, Any], root: Path, config_dir: Path) -> dict[str, Any]:
    """Data paths relative to the config file's folder, where load_config resolves them."""
    out = dict(data)

    def rel(p: str) -> str:
        return Path(os.path.relpath(root / p, config_dir)).as_posix()

    for key in ("train_csv", "image_dir", "test_csv", "test_image_dir", "sample_submission"):
        if out.get(key):
            out[key] = rel(out[key])
    if out.get("layout") is not None:
        out["root"] = rel(".")
    return out


def _n_splits(table, forced: dict[str, Any]) -> tuple[int, str]:
    if "folds.n_splits" in forced:
        return int(forced["folds.n_splits"]), "set on the command line"
    groups = table.groups if table.groups is not None else None
    n_groups = len(set(groups)) if groups is not None else len(table.paths)
    if table.task == "classification" and table.targets.ndim == 1:
        import pandas as pd

        g = groups if groups is not None else range(len(table.targets))
        rarest = int(pd.DataFrame({"y": table.targets, "g": list(g)}).groupby("y")["g"].nunique().min())
        k = max(2, min(5, rarest, n_groups))
        why = "5 folds" if k == 5 else f"the rarest class has {rarest} groups, so {k} folds"
        return k, why + f" over {n_groups} {'groups' if groups is not None else 'images'}"
    k = max(2, min(5, n_groups // 2))
    return k, f"{k} folds over {n_groups} {'groups' if groups is not None else 'images'}"


def _plan(
    entry,
    k_out: int,
    task: str,
    images: list[Path],
    m: Machine,
    n_rows: int,
    n_splits: int,
    share_s: float,
    epochs: int | None,
) -> ModelPlan:
    """Probe the entry; fit epochs to its share of the budget, shrinking the input once or twice if even the
    minimum does not fit."""
    workers = 0 if not m.gpu and m.cores <= 2 else min(8, max(1, m.cores - 1))
    for _ in range(3):
        p = fit_batch(entry, k_out, task, images, m, n_rows)
        epoch_s = p.epoch_s(n_rows, n_splits, workers)
        fit = int((share_s / n_splits - FOLD_OVERHEAD_S) // epoch_s)
        if epochs is not None or fit >= MIN_EPOCHS or min(entry.hw) <= SIZES[1]:
            break
        h, w = entry.hw  # a quarter fewer pixels per step and try again
        scale = 0.75
        new = [max(SIZES[0], int(h * scale) // 32 * 32), max(SIZES[0], int(w * scale) // 32 * 32)]
        entry = dataclasses.replace(entry, image_size=new[0] if new[0] == new[1] else new)
        if min(new) <= SIZES[0]:
            p = fit_batch(entry, k_out, task, images, m, n_rows)
            epoch_s = p.epoch_s(n_rows, n_splits, workers)
            fit = int((share_s / n_splits - FOLD_OVERHEAD_S) // epoch_s)
            break
    chosen = epochs if epochs is not None else max(1, min(MAX_EPOCHS, fit))
    return ModelPlan(entry.name, entry.image_size, p.batch_size, chosen, epoch_s, p)


def init_config(
    comp_dir: str | Path,
    *,
    out: str | Path = "configs/exp.yaml",
    budget: str | float = "2h",
    device: str = "auto",
    overrides: Iterable[str] = (),
    models: list[str] | None = None,
    force: bool = False,
) -> InitResult:
    """Read a competition folder and write a commented, validated config sized to ``budget`` on ``device``.

    ``overrides`` (``"data.label_column=breed"``) decide guesses and set any key of the written config;
    ``models`` pins the backbones (timm names) instead of choosing them by budget.

    Example::

        result = comp.init_config("data/my-competition", out="configs/exp.yaml", budget="2h")
        print(result.text()); print("\\n".join(result.recipe()))
    """
    out = Path(out)
    if out.exists() and not force:
        raise CompError(f"{out} exists; pass --force to replace it, or another --out")
    overrides = list(overrides)
    forced = _forced(overrides)
    budget_s = parse_budget(budget) if isinstance(budget, str) else float(budget)
    m = machine(device)
    inv = scan_folder(comp_dir)
    det = detect(inv, forced)
    config_dir = out.resolve().parent
    data = {
        k: v for k, v in _relative(det.data, inv.root, config_dir).items() if v is not None or k == "sample_submission"
    }
    task = det.task
    metric, _ = TASK_DEFAULTS[task]
    names = list(models) if models else backbones(budget_s, m)
    raw: dict[str, Any] = {
        "seed": 42,
        "task": task,
        "metric": metric,
        "device": "auto" if device == "auto" else device,
        "data": {**data, "num_workers": 0 if not m.gpu and m.cores <= 2 else min(8, max(1, m.cores - 1))},
        "folds": {"n_splits": 5, "seed": 42},
        "train": {"epochs": 10, "batch_size": 32, "lr": 3.0e-4, "weight_decay": 0.01, "warmup_epochs": 0.5},
        "augment": {"train": copy.deepcopy(AUGMENT)},
        "loss": {"label_smoothing": 0.05} if task == "classification" else {},
        "models": [{"name": n, "pretrained": True, "image_size": 224} for n in names],
        "predict": {"tta": ["hflip"]},
    }
    written = apply_overrides(copy.deepcopy(raw), overrides)
    cfg = load_config(written, base_dir=config_dir)  # shape and the detected data, before any timing
    table = load_train_table(cfg.data, check_images=False, task=cfg.task)
    n_splits, folds_why = _n_splits(table, forced)
    raw["folds"]["n_splits"] = n_splits
    seen = look(table, n_splits)
    guesses = det.guesses + [Guess("folds.n_splits", n_splits, folds_why)]
    warnings = det.notes + seen.warnings
    size = image_size(seen.heights or [224], seen.widths or [224], m, budget_s)
    for entry in raw["models"]:
        entry["image_size"] = size
    cfg = load_config(apply_overrides(copy.deepcopy(raw), overrides), base_dir=config_dir)
    k_out = len(table.classes)
    fixed_epochs = {i for i in range(len(cfg.models)) if f"models.{i}.epochs" in forced} | (
        set(range(len(cfg.models))) if "train.epochs" in forced else set()
    )
    plans = []
    share = (budget_s - RUN_OVERHEAD_S * len(cfg.models)) / len(cfg.models)
    for i, entry in enumerate(cfg.models):
        epochs = cfg.train_for(entry).epochs if i in fixed_epochs else None
        plan = _plan(entry, k_out, cfg.task, table.paths, m, len(table.paths), cfg.folds.n_splits, share, epochs)
        plans.append(plan)
        r = raw["models"][i] if i < len(raw["models"]) else None
        if r is not None:
            r["image_size"] = plan.image_size
            # one model: epochs and batch in the train block; several: each entry its own
            into = raw["train"] if len(cfg.models) == 1 else r
            into.update(batch_size=plan.batch_size, epochs=plan.epochs)
            if plan.epochs < 4:
                into["warmup_epochs"] = 0
    expected = sum(p.total_s(cfg.folds.n_splits) for p in plans) + RUN_OVERHEAD_S * len(plans)
    if expected > budget_s * 1.1:
        warnings.append(
            f"the budget {format_s(budget_s)} is too small: even {plans[0].epochs} epoch(s) take {format_s(expected)}; "
            "raise --budget or choose a smaller backbone with --models"
        )
    written = apply_overrides(copy.deepcopy(raw), overrides)
    cfg = load_config(written, base_dir=config_dir)
    from comp.inference._tta import check_config as check_tta
    from comp.metrics import check_config as check_metric
    from comp.training._losses import check_config as check_losses

    for check in (check_metric, check_losses, check_tta):
        check(cfg)
    comments = _comments(guesses, plans, m, cfg, size, overrides, forced)
    header = [
        f"written by comp init on {datetime.date.today().isoformat()} from {inv.root}",
        f"for {m.name}, budget {format_s(budget_s)}: expected wall time {format_s(expected)}",
        f"train it with: comp train-folds --config {out}",
        "each guess names its evidence; change any key here or with --set",
    ]
    text = to_yaml(written, comments, header)
    write_text(out, text)
    return InitResult(out, cfg, guesses, warnings, m, plans, cfg.folds.n_splits, budget_s, expected)


def _comments(guesses, plans, m: Machine, cfg: Config, size, overrides, forced) -> dict[str, str]:
    notes: dict[str, str] = {}
    for g in guesses:
        key = g.key if g.key != "data.layout.group" else "data.layout.group"
        notes[key] = g.evidence
    notes["task"] = next((g.evidence for g in guesses if g.key == "task"), "")
    notes["metric"] = "the task's default; put the competition's metric here"
    notes["device"] = f"trained where the probe ran: {m.name}"
    notes["data.num_workers"] = f"{m.cores} CPU cores"
    notes["predict.tta"] = "horizontal flip at test time"
    notes["train.lr"] = "AdamW fine-tuning of a pretrained backbone"
    for i, p in enumerate(plans):
        notes[f"models.{i}"] = (
            f"probe: {p.probe.step_s * 1000:.0f} ms/step at batch {p.batch_size}; {format_s(p.epoch_s)}/epoch/fold"
        )
    if len(plans) == 1:
        notes["train.epochs"] = f"what fits the budget: {format_s(plans[0].epoch_s)} per epoch and fold, measured"
        notes["train.batch_size"] = "fits the device's memory" if m.gpu else "CPU: memory is not the limit"
    if cfg.data.layout is not None:
        notes["data.root"] = "the competition folder: layout paths are under it"
    for key in forced:
        notes[key] = "set on the command line"
    return notes
