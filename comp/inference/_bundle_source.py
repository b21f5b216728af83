"""What ``comp bundle`` is pointed at, resolved: a run folder, one model folder, or a blend of comp ensemble.

A blend is carried as its members' graphs and weights, so only blends that are a weighted mean of member
predictions (and add no per-class bias) can be bundled, whatever the task: the mean of class or label
probabilities, or of target values; or a GBDT stack whose boosters comp ensemble saved (``stack.json``), which
predict.py runs with LightGBM over the graphs' predictions and the test table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comp.config import Config, DataConfig
from comp.errors import CompError, RunFolderError
from comp.inference._export import select_models
from comp.run import RunDir, locate

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One model of the bundle: a run's model folder and its weight in the final mean."""

    run: RunDir
    model_id: str
    weight: float
    cfg: Config

    @property
    def name(self) -> str:
        return f"{self.run.root.name}/{self.model_id}"


@dataclass
class Source:
    """What ``comp bundle`` was pointed at, resolved: the models to fuse and where the competition's data is."""

    kind: str  # "run", "model" or "blend"
    path: Path
    members: list[Member]
    data: DataConfig
    classes: list[str] | None = None  # a blend's column order; None: the first model's
    blend: RunDir | None = None  # the blend's run folder, whose test.csv the bundle must reproduce
    blend_name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"
    metric: str | None = None  # the metric whose decision (thresholds, cut-points) the submission applies
    stack: dict[str, Any] | None = None  # a GBDT blend's stack.json; its members are the graphs, in order


def blend_source(run: RunDir, name: str, blend: dict[str, Any], path: Path) -> Source:
    from comp.ensembling._blend import METHODS

    method, weights, members = blend["method"], blend.get("weights"), blend["members"]
    where = run.metrics(name)
    if blend.get("bias"):
        raise CompError(
            f"blend {name} adds per-class biases (--bias), which predict.py does not apply; "
            f"bundle the same blend made without --bias"
        )
    spec = METHODS.get(method)
    stack = run.read_stack(name) if spec.side else None
    if spec.side and stack is None:
        raise CompError(
            f"blend {name} uses method {method!r} but its folder holds no saved boosters ({run.stack(name).name}); "
            "re-run comp ensemble --method gbdt with this comp, then bundle it"
        )
    if stack is not None:
        weights = [1.0] * len(members)  # every member is an input of the stack, none is left out
    elif not spec.weighted_mean or weights is None:
        able = ", ".join(n for n in METHODS if METHODS[n].weighted_mean)
        raise CompError(
            f"blend {name} uses method {method!r}, which is not a weighted mean of member probabilities; "
            f"bundle a blend made with {able}, or the runs themselves"
        )
    if not isinstance(members, list) or not isinstance(weights, list) or len(members) != len(weights):
        raise RunFolderError(f"{where} lists {len(members)} members and {len(weights)} weights; re-run comp ensemble")
    cfg = run.load_config()
    out = []
    for member, weight in zip(members, weights):
        mpath = Path(member)
        if not weight > 0:
            log.info("blend %s: member %s has weight 0; left out of the bundle", name, mpath)
            continue
        mrun = RunDir(mpath.parent.parent)
        if not mrun.checkpoints(mpath.name):
            raise RunFolderError(
                f"blend member {mpath} (listed in {where}) has no fold checkpoints; the bundle needs "
                "each member's checkpoints where comp ensemble found them"
            )
        out.append(Member(mrun, mpath.name, float(weight), mrun.load_config()))
    classes = run.read_oof(name, id_column=cfg.data.id_column).classes
    info = {"method": method, "weights": None if stack is not None else weights}
    metric = run.read_metrics(name).metric
    return Source("blend", path, out, cfg.data, classes, run, name, info, cfg.task, metric, stack)


def resolve_source(source: str | Path, models: list[str] | None) -> Source:
    """A run folder (its models, or ``models``), a model folder ``RUN/models/<id>``, or a blend of comp ensemble."""
    hint = "pass a run folder, a model folder RUN/models/<id>, or a blend folder written by comp ensemble"
    if not Path(source).is_dir():
        raise RunFolderError(f"{source} not found; {hint}")
    try:
        found = locate(source, hint=hint)
    except RunFolderError:
        raise RunFolderError(f"{source} is not a run folder (no config.yaml); {hint}") from None
    run, path = found.run, Path(source)
    if found.model_id is None:
        if run.trained_ids():
            cfg = run.load_config()
            members = [Member(run, m, 1.0, cfg) for m in select_models(run, models)]
            return Source("run", path, members, cfg.data, task=cfg.task, metric=cfg.metric)
        blends = [(n, b) for n in run.model_folders() if (b := run.blend_info(n))]
        if len(blends) != 1:
            raise RunFolderError(f"{path} holds no fold checkpoints and {len(blends)} blends; {hint}")
        name, blend = blends[0]
    else:
        name = found.model_id
        if run.checkpoints(name):
            if models and models != [name]:
                raise CompError(
                    f"--model {','.join(models)}: {path} is the model folder of {name}; pass the run folder"
                )
            cfg = run.load_config()
            return Source("model", path, [Member(run, name, 1.0, cfg)], cfg.data, task=cfg.task, metric=cfg.metric)
        info = run.blend_info(name)
        if info is None:
            raise RunFolderError(f"{path} has no fold checkpoints and is not a blend; {hint}")
        blend = info
    if models:
        raise CompError("--model picks models of a run folder; a blend bundles its own members")
    return blend_source(run, name, blend, path)


def same_images(members: list[Member], data: DataConfig, task: str = "classification") -> None:
    """Every member reads test images one way and predicts the bundle's task."""
    for m in members:
        if m.cfg.task != task:
            raise CompError(
                f"member {m.name} predicts task {m.cfg.task}, the bundle {task}; bundle models of one competition"
            )
        d = m.cfg.data
        for key in ("id_column", "image_ext", "path_template"):
            if getattr(d, key) != getattr(data, key):
                raise CompError(
                    f"member {m.name} reads test images with data.{key}={getattr(d, key)!r}, the bundle's "
                    f"first model with {getattr(data, key)!r}; a bundle reads each image one way"
                )
