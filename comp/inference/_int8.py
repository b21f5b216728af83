"""int8 graphs: onnxruntime's static quantization of exported float graphs, calibrated on training images and
checked against the float graph on held-out rows before anything is written.

The choices below were measured (``benchmarks/bench_int8.py --methods`` and the probe of the issue that asked
for this, a CPU with avx512_vnni, 2 threads; the README has the table):

- QDQ format, int8 weights per output channel, uint8 activations: onnxruntime's u8s8 kernels are the ones
  VNNI speeds up (int8 activations ran at 0.16x the uint8 graph here, 0.93x float32 in the probe);
- onnxruntime's quantization pre-processing first (graph optimisation, which folds batch norms into
  convolutions): the probe measured 0.57x float32 without it on resnet18 (a loaded mobilenetv3 run here
  showed no difference either way);
- MinMax calibration: Entropy and Percentile took 3x longer to calibrate and gave the same held-out metric
  and largest probability difference;
- kept in float32: the last weight layer (the classifier) and everything after it (the output head, the TTA
  merge, the fold mean), so outputs keep float resolution (a uint8 softmax has 1/255 steps; a regression
  head scales to the target's units): quantizing them too was no faster and moved probabilities more (0.016
  against 0.011); and a metadata tower's own branch before it joins the images, whose raw rows hold NaN where
  a value is missing, which no calibrated range represents.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from comp.config import Config
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, TrainTable, load_train_table
from comp.errors import CompError
from comp.metrics import get_metric
from comp.run import CheckpointMeta, RunDir
from comp.training._tower import train_metadata

log = logging.getLogger(__name__)
DEFAULT_CALIB = 256
DEFAULT_MAX_DROP = 0.005
HELD_OUT = 512  # rows the int8 graph is scored on against the float one
BATCH = 64
HEAVY = ("Conv", "ConvTranspose", "MatMul", "Gemm")
METHODS = ("minmax", "entropy", "percentile")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp")  # x86 VNNI, and the Arm dot-product instructions
_noted: list[bool] = []


@dataclass(frozen=True)
class Int8Options:
    """How ``comp export --int8`` calibrates and checks: ``calib`` training images (a seeded sample), refused
    when the task's metric on held-out rows drops by more than ``max_drop`` from the float graph's."""

    calib: int = DEFAULT_CALIB
    max_drop: float = DEFAULT_MAX_DROP
    method: str = "minmax"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.calib, int) or self.calib < 1:
            raise CompError(f"--calib must be a number of images >= 1, got {self.calib}")
        if not math.isfinite(self.max_drop):
            raise CompError(f"--max-drop must be a finite metric difference (e.g. 0.005), got {self.max_drop}")
        if self.method not in METHODS:
            raise CompError(f"int8 calibration method {self.method!r}: choose from {', '.join(METHODS)}")


def has_vnni(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU has int8 dot-product instructions (None when /proc/cpuinfo cannot say)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = {w for line in cpuinfo.splitlines() if line.lower().startswith(("flags", "features")) for w in line.split()}
    return any(f in flags for f in VNNI_FLAGS)


def note_speed(accelerated: bool = False, cpuinfo: str | None = None) -> bool:
    """Say once per process that int8 may not be faster here (no VNNI/dot-product, or a GPU provider runs the
    graph); returns whether it said so now."""
    if _noted:
        return False
    why = "a GPU provider runs the graphs" if accelerated else ""
    if not why and has_vnni(cpuinfo) is False:
        why = "this CPU has no int8 dot-product instructions (avx512_vnni, avx_vnni or Arm dotprod)"
    if not why:
        return False
    _noted.append(True)
    log.warning("int8 graphs may not be faster than float32 here: %s", why)
    return True


# ---------------------------------------------------------------- rows


@dataclass
class Rows:
    """Images (and a metadata tower's raw rows) through a model's eval transform, with their targets."""

    inputs: tuple[np.ndarray, ...]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def sample(
    cfg: Config, run: RunDir, meta: CheckpointMeta, fold: int | None, options: Int8Options
) -> tuple[Rows, Rows, str]:
    """(calibration rows, held-out rows, what the held-out rows are) for one graph, seeded and disjoint.

    A fold's graph is calibrated on its training part and scored on its validation (OOF) rows; the fused graph
    (every fold) on two disjoint samples of all rows, as no row is held out from every fold."""
    table = load_train_table(cfg.data, task=cfg.task)
    fold_of = run.fold_of(cfg.data.id_column).reindex(table.df[cfg.data.id_column]).to_numpy()
    known = ~np.isnan(fold_of.astype(np.float64))
    rng = np.random.default_rng(options.seed)
    if fold is None:
        pool = rng.permutation(np.flatnonzero(known))
        held = np.sort(pool[: min(HELD_OUT, len(pool) // 2)])
        calib = pool[len(held) :]
        source = "rows held out from calibration"
    else:
        held = np.flatnonzero(fold_of == fold)
        held = np.sort(rng.choice(held, size=min(HELD_OUT, len(held)), replace=False))
        calib = rng.permutation(np.flatnonzero(known & (fold_of != fold)))
        source = f"fold {fold} validation rows"
    calib = np.sort(calib[: options.calib])
    if not len(calib) or not len(held):
        raise CompError(
            f"{run.root}: folds.csv leaves no rows to calibrate and check the int8 graph on; re-run comp train-folds"
        )
    return _rows(cfg, table, meta, calib), _rows(cfg, table, meta, held), source


def _rows(cfg: Config, table: TrainTable, meta: CheckpointMeta, idx: np.ndarray) -> Rows:
    ds = ImageDataset([table.paths[i] for i in idx], transform=from_dict(meta.eval_transform))
    images = np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.float32)
    inputs = (images,) if not meta.tower else (images, train_metadata(cfg.data, meta.tower, table.df)[idx])
    return Rows(tuple(np.ascontiguousarray(v, np.float32) for v in inputs), table.targets[idx])


# ---------------------------------------------------------------- quantization


def float_nodes(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Nodes kept in float32 (see the module docstring): those with no weight layer downstream (the last weight
    layer, the head and what follows), and those fed by the metadata input alone (``names[1]``)."""
    nodes = list(model.graph.node)  # topological order, as ONNX requires
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, []).append(i)
    heavy_below = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        below = [j for o in nodes[i].output for j in readers.get(o, [])]
        heavy_below[i] = any(nodes[j].op_type in HEAVY or heavy_below[j] for j in below)
    keep = {i for i in range(len(nodes)) if not heavy_below[i]}
    if len(names) > 1:
        reach = {name: _downstream(nodes, name) for name in names[:2]}
        keep |= reach[names[1]] - reach[names[0]]
    return [nodes[i].name for i in sorted(keep)]


def nan_overrides(model: onnx.ModelProto, names: list[str]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Fixed quantization parameters for the tensors of the metadata input's own branch (kept in float, never
    quantized): onnxruntime computes parameters for every calibrated tensor, and a range over rows holding NaN
    is NaN, which it refuses ("scale issue")."""
    if len(names) < 2:
        return {}
    nodes = list(model.graph.node)
    only_meta = _downstream(nodes, names[1]) - _downstream(nodes, names[0])
    tensors = {names[1], *(o for i in only_meta for o in nodes[i].output)}
    fixed: dict[str, np.ndarray] = {"scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}
    return {t: [dict(fixed)] for t in sorted(tensors)}


def _downstream(nodes: list[onnx.NodeProto], source: str) -> set[int]:
    seen, values = set(), {source}
    for i, n in enumerate(nodes):
        if values.intersection(n.input):
            seen.add(i)
            values.update(n.output)
    return seen


class _Reader:
    """onnxruntime's calibration reader protocol over preprocessed rows, one batch per call."""

    def __init__(self, rows: Rows, names: list[str]):
        self.batches = iter(
            [dict(zip(names, (v[s : s + BATCH] for v in rows.inputs))) for s in range(0, len(rows), BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # never needed: each calibration reads the rows once
        return None


def quantize(
    src: Path,
    dst: Path,
    calib: Rows,
    names: list[str],
    method: str = "minmax",
    *,
    keep_float: bool = True,
    pre_process: bool = True,
    activations: str = "uint8",
) -> None:
    """``src`` (a float32 graph) -> ``dst``: pre-processed, then QDQ with int8 per-channel weights and uint8
    activations calibrated on ``calib``; ``src``'s metadata is carried over with ``precision`` int8.
    ``keep_float``, ``pre_process`` and ``activations`` exist for the benchmark's comparison of the choices."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="comp-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        if pre_process:
            # symbolic shape inference (seconds per graph, in Python) is skipped: ONNX's own shape inference types
            # every tensor of these graphs (the same nodes come out), and the optimisation is what matters
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre if pre_process else src))
        for i, n in enumerate(model.graph.node):
            n.name = n.name or f"{n.op_type}_{i}"  # nodes_to_exclude names nodes
        onnx.save(model, str(pre))
        with warnings.catch_warnings():  # numpy's all-NaN warnings over the metadata branch's calibration
            warnings.simplefilter("ignore", RuntimeWarning)
            quantize_static(
                str(pre),
                str(dst),
                _Reader(calib, names),  # the reader protocol, not the base class
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate[method],
                nodes_to_exclude=float_nodes(model, names) if keep_float else [],
                extra_options={"TensorQuantOverrides": nan_overrides(model, names)},
            )
    out, source = onnx.load(str(dst)), onnx.load(str(src), load_external_data=False)
    del out.metadata_props[:]
    for p in source.metadata_props:
        out.metadata_props.add(key=p.key, value='"int8"' if p.key == "precision" else p.value)
    out.metadata_props.add(key="int8", value=f'{{"calibration": "{method}", "calib_images": {len(calib)}}}')
    onnx.save(out, str(dst))


def run_graph(path: Path, inputs: tuple[np.ndarray, ...], names: list[str], output: str) -> np.ndarray:
    """``path``'s predictions of ``inputs`` on the CPU provider, in batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    n = len(inputs[0])
    parts = [session.run([output], dict(zip(names, (v[s : s + BATCH] for v in inputs))))[0] for s in range(0, n, BATCH)]
    return np.concatenate(parts).astype(np.float64)


# ---------------------------------------------------------------- the check


@dataclass(frozen=True)
class Int8Check:
    """The int8 graph against its float graph on the same held-out rows: the task's metric for each (the
    decision a fitted metric needs, fitted once on the float predictions) and the largest difference."""

    metric: str
    float_score: float
    int8_score: float
    greater_is_better: bool
    max_diff: float
    rows: int
    source: str

    @property
    def drop(self) -> float:
        """How much worse the int8 graph scores (negative: better): absolute for a score within [-1, 1]
        (accuracy, F1, AUC, QWK), relative to the float score beyond (an RMSE in the target's units, a log loss
        above 1), so one ``--max-drop`` means the same for prices in the thousands as for probabilities."""
        d = self.float_score - self.int8_score
        return (d if self.greater_is_better else -d) / max(1.0, abs(self.float_score))

    def describe(self) -> str:
        return (
            f"{self.metric} {self.float_score:.4f} (float32) -> {self.int8_score:.4f} (int8), drop {self.drop:+.4f}, "
            f"max |diff| {self.max_diff:.2e} on {self.rows} {self.source}"
        )

    def report(self) -> dict:
        return {
            "metric": self.metric,
            "float_score": self.float_score,
            "int8_score": self.int8_score,
            "drop": self.drop,
            "max_abs_diff": self.max_diff,
            "rows": self.rows,
            "checked_on": self.source,
        }


def score(cfg: Config, held: Rows, float_pred: np.ndarray, int8_pred: np.ndarray, source: str) -> Int8Check:
    """Both graphs' predictions of the held-out rows, scored with the task's metric."""
    metric = get_metric(cfg.metric, cfg.task)
    decision = metric.decide(held.targets, float_pred)
    return Int8Check(
        metric.name,
        metric(held.targets, float_pred, decision),
        metric(held.targets, int8_pred, decision),
        metric.greater_is_better,
        float(np.abs(int8_pred - float_pred).max()),
        len(held),
        source,
    )


def write_int8(
    float_graph: Path,
    dst: Path,
    *,
    cfg: Config,
    run: RunDir,
    meta: CheckpointMeta,
    fold: int | None,
    options: Int8Options,
    names: list[str],
    output: str,
    label: str,
    columns: list[int] | None = None,
) -> Int8Check:
    """Quantize ``float_graph`` into ``dst`` and check it; a CompError with the numbers when the metric drops
    by more than ``options.max_drop`` (the caller discards ``dst``). ``columns``: where each of the training
    table's output columns is in the graph's output (a bundle may reorder classes)."""
    calib, held, source = sample(cfg, run, meta, fold, options)
    quantize(float_graph, dst, calib, names[: len(calib.inputs)], options.method)
    inputs = names[: len(held.inputs)]
    preds = [run_graph(g, held.inputs, inputs, output) for g in (float_graph, dst)]
    if columns is not None:
        preds = [p[:, columns] for p in preds]
    check = score(cfg, held, preds[0], preds[1], source)
    if not check.drop <= options.max_drop:
        raise CompError(
            f"{label}: int8 {check.describe()}: more than --max-drop {options.max_drop:g}; nothing written "
            "(calibrate on more images with --calib, or keep the float32 graphs)"
        )
    return check
