"""Multi-head models for labels made of attributes: one shared timm backbone, one classifier per attribute.

The module's output is the log of the competition-class probabilities composed from the heads
(``log p(class) = sum_j log p_j(value of class in attribute j)``). That product of softmaxes already sums to
one, so ``softmax(output)`` is exactly the composed probabilities: training, validation, ONNX export
(softmax inside the graph) and prediction treat the model like any N-class classifier.

The loss works on that output too: an attribute's log-probabilities are the log-sum-exp of the class
log-probabilities that share its value (the marginal of a product is the factor itself), and its target is
the same marginal of the (mixed, soft) class target. So MixUp/CutMix need nothing new, and each head gets
its own loss, label smoothing, class weights and weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from comp.data._table import TrainTable
from comp.errors import CompError
from comp.training._losses import LOSSES, class_weights

if TYPE_CHECKING:
    from comp.config import LossConfig
    from comp.config._labels import Scheme


class Backbone(Protocol):
    """What the heads use of a timm model created with ``num_classes=0`` (nn.Module types these as Tensor | Module)."""

    num_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor) -> torch.Tensor: ...


class AttributeHeads(nn.Module):
    """A timm backbone without classifier (``num_classes=0``) and one linear head per attribute."""

    combos: torch.Tensor  # buffer (N classes, attributes): class c's value index per attribute

    def __init__(self, backbone: nn.Module, attributes: list[tuple[str, int]], combos: np.ndarray):
        super().__init__()
        self.backbone = backbone
        width = getattr(backbone, "head_hidden_size", None) or self._timm.num_features  # what forward returns
        self.heads = nn.ModuleDict({name: nn.Linear(int(width), k) for name, k in attributes})
        table = torch.as_tensor(np.asarray(combos), dtype=torch.long)
        if table.ndim != 2 or table.shape[1] != len(attributes):
            raise ValueError(f"combos must be (classes, {len(attributes)}), got {tuple(table.shape)}")
        self.register_buffer("combos", table)
        # timm's data config reads it (mean, std)
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})

    @property
    def _timm(self) -> Backbone:
        return cast(Backbone, self.backbone)

    @property
    def attributes(self) -> list[tuple[str, int]]:
        return [(name, cast(nn.Linear, head).out_features) for name, head in self.heads.items()]

    def get_classifier(self) -> nn.Module:
        """The heads (what trains during a frozen-backbone warm-up)."""
        return self.heads

    # timm's feature interface, so Grad-CAM (comp explain) sees the backbone's maps
    @property
    def num_features(self) -> int:
        return self._timm.num_features

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        info = getattr(self.backbone, "feature_info", None) or []
        return [{**f, "module": f"backbone.{f['module']}"} for f in info]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._timm.forward_features(x)

    def _heads(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(pooled) for name, head in self.heads.items()}

    def head_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each attribute head's logits."""
        return self._heads(self._timm(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Log of the composed class probabilities from the backbone's feature map."""
        return self._compose(self._heads(self._timm.forward_head(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the composed class probabilities, (batch, N classes) in code order."""
        return self._compose(self.head_logits(x))

    def _compose(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        out = None
        for j, head in enumerate(logits.values()):
            part = torch.log_softmax(head.float(), dim=1)[:, self.combos[:, j]]
            out = part if out is None else out + part
        assert out is not None
        return out

    def describe(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this module (plain lists: loadable with weights_only)."""
        return {"attributes": [[name, k] for name, k in self.attributes], "combos": self.combos.tolist()}


def attribute_heads(backbone: nn.Module, scheme: Scheme) -> AttributeHeads:
    """Heads for every attribute of a label scheme on ``backbone`` (created with ``num_classes=0``)."""
    return AttributeHeads(backbone, [(a.name, len(a.values)) for a in scheme.attributes], scheme.combos)


def from_description(backbone: nn.Module, heads: dict[str, Any]) -> AttributeHeads:
    """Rebuild the module a checkpoint's ``heads`` entry describes (weights loaded by the caller)."""
    return AttributeHeads(backbone, [(str(n), int(k)) for n, k in heads["attributes"]], np.asarray(heads["combos"]))


class AttributeLoss(nn.Module):
    """Weighted sum over attributes of each head's loss, from class log-probabilities and soft class targets."""

    def __init__(self, scheme: Scheme, loss_cfg: LossConfig, train_targets: dict[str, np.ndarray]):
        super().__init__()
        self.names = scheme.names
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.smoothing: dict[str, float] = {}
        for j, attr in enumerate(scheme.attributes):
            cfg, k = loss_cfg.head(attr.name), len(attr.values)
            self.losses[attr.name] = LOSSES[cfg.name](
                class_weights(cfg.class_weights, train_targets[attr.name], k), gamma=cfg.focal_gamma
            )
            self.weights[attr.name], self.smoothing[attr.name] = cfg.weight, cfg.label_smoothing
            member = torch.zeros(scheme.n_classes, k, dtype=torch.bool)
            member[torch.arange(scheme.n_classes), torch.as_tensor(scheme.combos[:, j])] = True
            self.register_buffer(f"member_{j}", member)  # (N, k): class c has value i

    def parts(
        self, log_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each attribute's (unweighted) loss."""
        out = {}
        for j, name in enumerate(self.names):
            member = getattr(self, f"member_{j}")
            masked = log_probs.float().unsqueeze(2).masked_fill(~member, float("-inf"))  # (B, N, k)
            log_marginal = torch.logsumexp(masked, dim=1)  # (B, k): log p_j, the head's own log-softmax
            soft = target.float() @ member.float()  # (B, k): the class target's marginal
            eps = self.smoothing[name]
            if eps:
                soft = soft * (1 - eps) + eps / soft.shape[1]
            out[name] = self.losses[name](log_marginal, soft, weight)
        return out

    def forward(
        self, log_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = self.parts(log_probs, target, weight)
        return sum((self.weights[n] * parts[n] for n in self.names), torch.zeros((), device=log_probs.device))


def attribute_loss(loss_cfg: LossConfig, table: TrainTable, idx: np.ndarray) -> AttributeLoss:
    """The multi-head loss for training rows ``idx`` of a table whose labels are attributes."""
    if table.scheme is None or table.attributes is None:
        raise CompError("heads: attributes needs labels made of attributes; set data.labels")
    return AttributeLoss(table.scheme, loss_cfg, {n: v[idx] for n, v in table.attributes.train.items()})
