"""Looking at the data, the pipeline's speed and the model's mistakes: eda, bench-data, explain."""

from comp.diagnostics._bench_data import bench_data
from comp.diagnostics._eda import run_eda
from comp.diagnostics._explain import explain_run

__all__ = ["bench_data", "explain_run", "run_eda"]
