"""Submissions built and validated against the sample, and the optional Kaggle upload."""

from comp.submission._format import make_submission, validate_submission, write_submission
from comp.submission._kaggle import check_file, kaggle_api, submit
from comp.submission._record import find_run, record_submission, record_upload

__all__ = [
    "check_file",
    "find_run",
    "kaggle_api",
    "make_submission",
    "record_submission",
    "record_upload",
    "submit",
    "validate_submission",
    "write_submission",
]
