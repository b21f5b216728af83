"""TTA, ONNX export with a parity check, prediction with onnxruntime or PyTorch, and offline bundles."""

# each engine module registers itself in ENGINES: a new engine is one module and its line here
from comp.inference import _onnxruntime, _torch_engine  # noqa: F401
from comp.inference._bundle import BundleResult, bundle_run
from comp.inference._engines import ENGINES
from comp.inference._export import export_run
from comp.inference._predict import ModelPrediction, PredictResult, predict_run
from comp.inference._predictor import Predictor, load_predictor
from comp.inference._tta import MERGES, TTA_OPS, merge_probs

__all__ = [
    "ENGINES",
    "MERGES",
    "TTA_OPS",
    "BundleResult",
    "ModelPrediction",
    "PredictResult",
    "Predictor",
    "bundle_run",
    "export_run",
    "load_predictor",
    "merge_probs",
    "predict_run",
]
