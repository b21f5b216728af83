"""Blending model folders by their OOF predictions, scored with nested CV."""

from comp.ensembling._blend import METHODS
from comp.ensembling._ensemble import (
    BlendResult,
    CompareResult,
    MemberScore,
    compare_blends,
    run_ensemble,
    submit_blend,
)
from comp.ensembling._members import load_member

__all__ = [
    "METHODS",
    "BlendResult",
    "CompareResult",
    "MemberScore",
    "compare_blends",
    "load_member",
    "run_ensemble",
    "submit_blend",
]
