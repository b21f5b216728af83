"""TTA, ONNX export with a parity check, and prediction with onnxruntime or PyTorch."""

from comp.inference._export import export_run
from comp.inference._predict import ModelPrediction, PredictResult, predict_run
from comp.inference._tta import MERGES, TTA_OPS, merge_probs

__all__ = ["MERGES", "TTA_OPS", "ModelPrediction", "PredictResult", "export_run", "merge_probs", "predict_run"]
