"""The metadata tower (``models[i].metadata``): an MLP over a row's encoded ``data.features``, concatenated with
the backbone's pooled image features before the classifier.

Training feeds the tower rows already encoded in numpy by the fold's :class:`FeatureScaler` (fitted on the
fold's training part only). Inference feeds the raw matrix (:meth:`Features.matrix`: numeric values with NaN
where missing, then category codes) and :class:`MetadataScaling` applies the same scaling inside the network,
so the checkpoint, the ONNX graph (a second input, ``meta``) and the fused k-fold graph each carry their own
fold's statistics and a consumer only has to read the table.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from comp.data._features import Features, FeatureScaler
from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import DataConfig, ModelConfig


class MetadataScaling(nn.Module):
    """:meth:`FeatureScaler.encode` in torch: raw (n, F_num + F_cat) floats -> the encoded (n, W) rows."""

    def __init__(self, scaler: FeatureScaler):
        super().__init__()
        self.n_numeric = scaler.n_numeric
        self.register_buffer("mean", torch.as_tensor(scaler.mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(scaler.std, dtype=torch.float32))
        self.cards = list(scaler.cardinalities)
        for j, (card, seen) in enumerate(zip(scaler.cardinalities, scaler.seen)):
            # hits over the seen codes (n, S) @ project (S, card) puts code c at column c + 1; no hit -> column 0
            project = torch.zeros(len(seen), card)
            project[torch.arange(len(seen)), torch.as_tensor(seen, dtype=torch.long) + 1] = 1.0
            self.register_buffer(f"seen_{j}", torch.as_tensor(seen, dtype=torch.float32))
            self.register_buffer(f"project_{j}", project)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        raw = raw.float()
        x = raw[:, : self.n_numeric]
        missing = torch.isnan(x)
        mean, std = cast(torch.Tensor, self.mean), cast(torch.Tensor, self.std)
        z = (torch.where(missing, mean.expand_as(x), x) - mean) / std
        parts = [z, missing.float()]
        for j, card in enumerate(self.cards):
            code = raw[:, self.n_numeric + j : self.n_numeric + j + 1]  # (n, 1), NaN when missing
            seen, project = cast(torch.Tensor, getattr(self, f"seen_{j}")), getattr(self, f"project_{j}")
            first = torch.zeros(1, card, device=raw.device)
            first[0, 0] = 1.0
            if seen.numel() == 0:  # the training part never had a value: always "missing"
                parts.append(torch.ones_like(code) * first)
                continue
            hits = (code == seen.unsqueeze(0)).float()  # NaN equals nothing
            parts.append(hits @ project + (1.0 - hits.sum(1, keepdim=True)) * first)
        return torch.cat(parts, dim=1)


class MetadataTower(nn.Module):
    """A timm backbone without classifier (``num_classes=0``), an MLP over the encoded metadata, and one linear
    classifier over both. ``forward(x, meta)`` takes encoded rows; ``forward_raw`` the raw matrix."""

    def __init__(self, backbone: nn.Module, num_classes: int, scaler: FeatureScaler, hidden: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        width = int(getattr(backbone, "head_hidden_size", None) or cast(Any, backbone).num_features)
        self.scaling = MetadataScaling(scaler)
        self.tower = nn.Sequential(
            nn.Linear(scaler.encoded_width, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(width + hidden, num_classes)
        self.scaler, self.hidden, self.dropout = scaler, hidden, dropout
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})  # timm's data config reads it (mean, std)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (what a regression model zeroes at the start)."""
        return self.head

    def warmup_modules(self) -> list[nn.Module]:
        """What trains during a frozen-backbone warm-up: the classifier and the tower, both new."""
        return [self.head, self.tower]

    @property
    def num_features(self) -> int:
        return cast(Any, self.backbone).num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return cast(Any, self.backbone).forward_features(x)

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(x)
        return self.head(torch.cat([pooled, self.tower(meta.to(pooled.dtype))], dim=1))

    def forward_raw(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        return self(x, self.scaling(raw))

    def describe(self, feats: Features) -> dict[str, Any]:
        """What a checkpoint stores to rebuild the tower and read a test table (plain values: weights_only)."""
        return {
            "hidden": self.hidden,
            "dropout": self.dropout,
            "numeric": list(feats.numeric_names),
            "categorical": list(feats.categorical_names),
            "levels": {k: list(v) for k, v in feats.levels.items()},
            "scaler": self.scaler.to_dict(),
        }


def tower_from_description(backbone: nn.Module, num_classes: int, desc: dict[str, Any]) -> MetadataTower:
    """The module a checkpoint's ``tower`` entry describes (weights loaded by the caller)."""
    scaler = FeatureScaler.from_dict(desc["scaler"])
    return MetadataTower(backbone, num_classes, scaler, int(desc["hidden"]), float(desc["dropout"]))


def is_tower(model: nn.Module) -> bool:
    return isinstance(getattr(model, "module", model), MetadataTower)


def raw_matrix(feats: Features) -> np.ndarray:
    """The float32 matrix a tower's ``forward_raw`` (and its ONNX graph's ``meta`` input) reads."""
    return feats.matrix().astype(np.float32)


def fold_metadata(
    entry: ModelConfig, features: Features | None, train_idx: np.ndarray
) -> tuple[FeatureScaler | None, np.ndarray | None]:
    """A tower model's scaler, fitted on the fold's training rows only (validation rows never reach its
    statistics), and every row encoded with it; (None, None) for a model without a tower."""
    if entry.metadata is None:
        return None, None
    if features is None:
        raise CompError(f"model '{entry.model_id}' has a metadata tower but data.features is not set; set it")
    scaler = FeatureScaler.fit(features.take(train_idx))
    return scaler, scaler.encode(features)


def tower_description(model: nn.Module, features: Features | None) -> dict[str, Any] | None:
    """A checkpoint's ``tower`` entry for ``model`` (None without a tower)."""
    model = getattr(model, "module", model)
    if not isinstance(model, MetadataTower):
        return None
    assert features is not None
    return model.describe(features)


def _tower_data(data_cfg: DataConfig, desc: dict[str, Any]) -> DataConfig:
    """``data_cfg`` reading exactly the columns the checkpoint's tower was trained on."""
    cats = list(desc["categorical"])
    return dataclasses.replace(data_cfg, features=[*desc["numeric"], *cats], categorical=cats or None)


def test_metadata(data_cfg: DataConfig, desc: dict[str, Any]) -> np.ndarray:
    """The raw metadata matrix of the test table (``data.test_csv``, in its row order) for a tower checkpoint;
    a category value the training table never had is refused by name."""
    from comp.data._features import read_test_features

    return raw_matrix(read_test_features(_tower_data(data_cfg, desc), desc["levels"])[1])


def train_metadata(data_cfg: DataConfig, desc: dict[str, Any], df: pd.DataFrame) -> np.ndarray:
    """The raw metadata matrix of the training rows ``df`` for a tower checkpoint, with the category codes it
    was trained on (a training table whose categories changed since is refused)."""
    from comp.data._features import encode_train

    feats = encode_train(df, _tower_data(data_cfg, desc), data_cfg.train_csv)
    if feats.levels != desc["levels"]:
        raise CompError(
            f"{data_cfg.train_csv}: the categories of {', '.join(desc['categorical'])} changed since the tower "
            "model was trained; retrain it (comp train-folds) on this table"
        )
    return raw_matrix(feats)


def frame_metadata(df: pd.DataFrame, data_cfg: DataConfig, desc: dict[str, Any], what: str) -> np.ndarray:
    """The raw metadata matrix of rows given in memory (``df``, one per image; ``what`` names it in messages),
    encoded exactly as :func:`test_metadata` encodes the test table's rows."""
    from comp.data._features import encode_test

    cfg = dataclasses.replace(_tower_data(data_cfg, desc), test_csv=what)
    return raw_matrix(encode_test(df.reset_index(drop=True), cfg, desc["levels"], what))
