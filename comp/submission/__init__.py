"""Submissions built and validated against the sample, and the optional Kaggle upload."""

from comp.submission._format import make_submission, validate_submission, write_submission
from comp.submission._kaggle import check_file, submit

__all__ = ["check_file", "make_submission", "submit", "validate_submission", "write_submission"]
