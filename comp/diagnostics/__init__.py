"""Looking at the data, the pipeline's speed and the model's mistakes: eda, bench-data, explain."""

from comp.diagnostics._bench_data import BenchDataResult, bench_data
from comp.diagnostics._eda import EdaResult, run_eda
from comp.diagnostics._explain import ExplainResult, explain_run

__all__ = ["BenchDataResult", "EdaResult", "ExplainResult", "bench_data", "explain_run", "run_eda"]
