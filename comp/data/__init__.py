"""Tables and images -> rows, folds, augmentation pipelines and the decoded-image cache."""

from comp.data._augment import (
    BatchMixer,
    DeviceNormalize,
    build_pipeline,
    eval_pipeline,
    from_dict,
    pipelines,
    to_dict,
    valid_pipeline,
)
from comp.data._folds import assign_folds
from comp.data._table import (
    ImageDataset,
    TrainTable,
    load_image,
    load_test_table,
    load_train_table,
    read_csv,
    to_rgb,
)

__all__ = [
    "BatchMixer",
    "DeviceNormalize",
    "ImageDataset",
    "TrainTable",
    "assign_folds",
    "build_pipeline",
    "eval_pipeline",
    "from_dict",
    "load_image",
    "load_test_table",
    "load_train_table",
    "pipelines",
    "read_csv",
    "to_dict",
    "to_rgb",
    "valid_pipeline",
]
