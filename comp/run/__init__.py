"""The run folder: the one reader and writer of each artifact, atomic writes, and fold locks."""

from comp.run._artifacts import Metrics, Predictions, parse_predictions
from comp.run._checkpoint import (
    CHECKPOINT_FORMAT,
    ONNX_FORMAT,
    Checkpoint,
    CheckpointMeta,
    graph_metadata,
    load_checkpoint,
    make_checkpoint,
    read_graph_metadata,
)
from comp.run._io import (
    LockHeld,
    atomic_write,
    clean_temporaries,
    exclusive,
    file_sha256,
    pid_alive,
    read_json,
    read_table,
    save_figure,
    torch_save,
    write_csv,
    write_json,
    write_text,
)
from comp.run._journal import FileSet, recover
from comp.run._resolve import Located, locate, model_with
from comp.run._rundir import RunDir

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointMeta",
    "ONNX_FORMAT",
    "FileSet",
    "Located",
    "LockHeld",
    "Metrics",
    "Predictions",
    "RunDir",
    "atomic_write",
    "clean_temporaries",
    "exclusive",
    "file_sha256",
    "graph_metadata",
    "load_checkpoint",
    "locate",
    "make_checkpoint",
    "model_with",
    "parse_predictions",
    "pid_alive",
    "read_graph_metadata",
    "read_json",
    "read_table",
    "recover",
    "save_figure",
    "torch_save",
    "write_csv",
    "write_json",
    "write_text",
]
