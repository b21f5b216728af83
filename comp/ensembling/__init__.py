"""Blending model folders by their OOF predictions, scored with nested CV."""

from comp.ensembling._blend import METHODS
from comp.ensembling._ensemble import compare_blends, load_member, result_rows, run_ensemble, submit_blend

__all__ = ["METHODS", "compare_blends", "load_member", "result_rows", "run_ensemble", "submit_blend"]
