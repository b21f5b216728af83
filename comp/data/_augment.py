"""albumentations pipelines from config, and CutMix/MixUp batch ops (timm's Mixup) with soft targets.

A pipeline is a list of ``{name: <albumentations class>, **kwargs}``. Transforms that take an output size
(``size`` or ``height``/``width``) get the model's image size unless the entry gives one; when no entry
sets the size, a Resize to the model's size comes first. Normalisation (the model's mean/std) and the
tensor conversion are always appended, so checkpoints carry the whole eval transform.
"""

from __future__ import annotations

import inspect
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from timm.data import Mixup
from timm.data.mixup import mixup_target

from comp.config import AugmentConfig, MixupConfig
from comp.errors import CompError, closest


def _transform_class(name: str, where: str):
    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform | A.BaseCompose)):
        valid = [n for n in dir(A) if inspect.isclass(getattr(A, n)) and issubclass(getattr(A, n), A.BasicTransform)]
        raise CompError(f"{where}: unknown albumentations transform '{name}'{closest(name, valid)}")
    return cls


def _sets_size(params) -> bool:
    return "size" in params or ("height" in params and "width" in params)


# comp appends the model's normalisation and the tensor conversion itself: in a list they would normalise twice
# (augment.valid) or train on nearly constant inputs (augment.train)
COMP_APPENDS = ("Normalize", "ToFloat", "ToTensorV2", "ToTensor")


def _appended_by_comp(name: str, where: str, what: str) -> CompError:
    return CompError(
        f"{where} ({name}): {what}; comp appends the normalisation (the model's mean/std) and the tensor "
        f"conversion to every pipeline itself, so augmentations keep uint8 pixels; remove {name}"
    )


def build_transform(entry: dict, hw: tuple[int, int], where: str):
    """One albumentations transform from ``{name: ..., **kwargs}``, filling in the output size if it takes one."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise CompError(
            f"{where} must be a mapping with a 'name', e.g. {{name: HorizontalFlip, p: 0.5}}, got {entry!r}"
        )
    if entry["name"] in COMP_APPENDS:
        raise _appended_by_comp(entry["name"], where, "this transform makes float pixels")
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    cls = _transform_class(entry["name"], where)
    params = inspect.signature(cls.__init__).parameters
    named = [n for n, prm in params.items() if n != "self" and prm.kind not in (prm.VAR_KEYWORD, prm.VAR_POSITIONAL)]
    for key in kwargs:  # albumentations only warns about unknown arguments and then ignores them
        if key not in named:
            raise CompError(
                f"{where} ({entry['name']}): unknown argument '{key}'{closest(key, named)}; it takes {', '.join(named)}"
            )
    if "size" in params and "size" not in kwargs:
        kwargs["size"] = tuple(hw)
    if "height" in params and "width" in params:
        kwargs.setdefault("height", hw[0])
        kwargs.setdefault("width", hw[1])
    for key in ("size", "scale", "ratio"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        msg = " ".join(str(exc).split()) if str(exc) else type(exc).__name__
        raise CompError(f"{where} ({entry['name']}): {msg[:300]}") from None


# Validation and test images must give the same pixels every time: only these, always applied (p=1).
DETERMINISTIC = (
    "Resize",
    "CenterCrop",
    "Crop",
    "PadIfNeeded",
    "LongestMaxSize",
    "SmallestMaxSize",
    "ToGray",
    "Normalize",
    "ToFloat",
    "FromFloat",
    "Equalize",
    "CLAHE",
    "InvertImg",
    "ToSepia",
    "Downscale",
)
_LOADABLE = {*DETERMINISTIC, "Compose", "ToTensorV2"}


def check_deterministic(entries: list, where: str) -> None:
    """``augment.valid`` becomes the checkpoints' eval transform: refuse random or partial transforms there."""
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name in COMP_APPENDS:
            raise _appended_by_comp(name, f"{where}[{i}]", "this transform makes float pixels")
        if name not in DETERMINISTIC:
            raise CompError(
                f"{where}[{i}] ({name}): validation and test transforms must be deterministic; "
                f"use one of {', '.join(DETERMINISTIC)} (random augmentations belong in augment.train)"
            )
        if float(entry.get("p", 1.0)) != 1.0:
            raise CompError(
                f"{where}[{i}] ({name}): p must be 1 in augment.valid (got {entry['p']}); "
                "a transform applied to some images only makes predictions random"
            )


def _tail(mean, std, normalize: bool) -> list:
    # normalize=False stops at the HWC uint8 array: the loader stacks contiguous arrays (a plain memcpy,
    # where CHW tensor views cost a strided copy per image) and DeviceNormalize permutes on the device.
    # A one-value mean means a one-channel model (in_chans: 1): images, read as RGB, become grayscale last.
    gray = [A.ToGray(num_output_channels=1, p=1.0)] if len(mean) == 1 else []
    return gray + ([A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()] if normalize else [])


def build_pipeline(entries: list, hw: tuple[int, int], mean, std, where: str, normalize: bool = True) -> A.Compose:
    """Compose the configured transforms, resizing to ``hw`` unless they already set the size, then normalise.

    ``normalize=False`` stops at the augmented HWC uint8 array: training normalises on the device instead
    (see ``DeviceNormalize``), which moves 4x fewer bytes from DataLoader workers and to the GPU.
    """
    transforms = [build_transform(e, hw, f"{where}[{i}]") for i, e in enumerate(entries)]
    if not any(_sets_size(inspect.signature(type(t).__init__).parameters) for t in transforms):
        transforms.insert(0, A.Resize(*hw))
    return A.Compose(transforms + _tail(mean, std, normalize))


def try_pipelines(aug_cfg: AugmentConfig, hw, image, source: str) -> None:
    """Run every configured transform of ``augment.train`` and ``augment.valid`` once, in order, on ``image`` (a
    real training image, named ``source``), so that what fails only when a transform runs (a ``Lambda`` given a
    string, a crop larger than the images) or turns the uint8 pixels into floats is refused before any write."""
    for key, entries in (("augment.train", aug_cfg.train), ("augment.valid", aug_cfg.valid)):
        if not entries:
            continue
        transforms = [build_transform(e, hw, f"{key}[{i}]") for i, e in enumerate(entries)]
        img = image
        if not any(_sets_size(inspect.signature(type(t).__init__).parameters) for t in transforms):
            img = A.Resize(*hw)(image=img)["image"]  # as build_pipeline: the size first
        for i, (entry, t) in enumerate(zip(entries, transforms)):
            where = f"{key}[{i}]"
            try:
                img = t(image=img, force_apply=True)["image"]
            except Exception as exc:  # noqa: BLE001 - whatever a transform raises on a real image is the user's
                msg = " ".join(str(exc).split())[:200] or type(exc).__name__
                raise CompError(
                    f"{where} ({entry['name']}) fails on the training image {source} ({type(exc).__name__}: {msg}); "
                    "fix its arguments"
                ) from None
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
                got = getattr(img, "dtype", type(img).__name__)
                raise _appended_by_comp(entry["name"], where, f"it turns the uint8 image into {got}")


def eval_pipeline(hw, mean, std, normalize: bool = True) -> A.Compose:
    """The deterministic transform used for validation, test and export: resize, normalise, to tensor."""
    return A.Compose([A.Resize(*hw)] + _tail(mean, std, normalize))


def valid_pipeline(aug_cfg: AugmentConfig, hw, mean, std, normalize: bool = True) -> A.Compose:
    """The validation pipeline: ``augment.valid`` when set, else ``eval_pipeline``."""
    if aug_cfg.valid:
        check_deterministic(aug_cfg.valid, "augment.valid")
        return build_pipeline(aug_cfg.valid, hw, mean, std, "augment.valid", normalize)
    return eval_pipeline(hw, mean, std, normalize)


def pipelines(aug_cfg: AugmentConfig, hw, mean, std, normalize: bool = True) -> tuple[A.Compose, A.Compose]:
    """(train, valid) pipelines from the config's ``augment`` block."""
    train = build_pipeline(aug_cfg.train, hw, mean, std, "augment.train", normalize)
    return train, valid_pipeline(aug_cfg, hw, mean, std, normalize)


class DeviceNormalize:
    """The loader's (B, H, W, C) uint8 batch -> normalised float (B, C, H, W) on its device.

    Same numbers as ``A.Normalize`` (max_pixel_value 255) + ``ToTensorV2``: ``(x - 255 mean) / (255 std)``.
    The memory layout (contiguous or channels-last) is fixed while the data is still uint8, a quarter
    of the bytes: 5.4 ms instead of 12-15 ms for a 32 x 224 x 224 batch on this CPU.
    """

    def __init__(self, mean, std, device, channels_last: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # grayscale arrays (B, H, W): one channel
            x = x[..., None]
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=self.layout)
        return x.float().sub_(self.mean).div_(self.std) if x.dtype != torch.float32 else (x - self.mean) / self.std


def to_dict(pipeline: A.Compose) -> dict:
    """A JSON/``weights_only``-safe description of a pipeline."""
    return A.to_dict(pipeline)


def from_dict(desc: dict, where: str = "eval_transform") -> A.Compose:
    """Rebuild a pipeline saved with :func:`to_dict`; only the deterministic transforms comp itself writes are
    accepted, so a crafted checkpoint cannot name an arbitrary class."""
    names: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            full = node.get("__class_fullname__")
            if full is not None:
                names.append(str(full))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(desc)
    bad = [n for n in names if n.rsplit(".", 1)[-1] not in _LOADABLE]
    if bad or not names:
        raise CompError(
            f"{where} names {bad[0] if bad else 'no transform'!r}, not a transform comp writes; "
            "re-export or retrain the model with comp"
        )
    try:
        return A.from_dict(desc)
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild means a damaged description
        raise CompError(f"{where} cannot be rebuilt ({type(exc).__name__}); retrain the model with comp") from None


class BatchMixer:
    """Turns a batch's targets into soft targets: CutMix/MixUp (timm's Mixup) plus label smoothing.

    Integer targets (classification) are one-hot encoded and smoothed over the classes exactly as timm does.
    Float target vectors (multi-hot labels, scaled regression values) are smoothed per label
    (``y (1 - s) + s / 2``; regression uses s = 0) and mixed linearly with the same draw as the images, so a
    CutMix of two images carries the area-weighted union of their labels or the area-weighted mean of their
    values. Mixing stops at ``off_epoch``; smoothing stays. Odd-sized batches are smoothed but not mixed,
    because pairing needs an even batch.
    """

    def __init__(self, mix_cfg: MixupConfig, num_classes: int, smoothing: float):
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.off_epoch = mix_cfg.off_epoch
        self.enabled = (mix_cfg.mixup_alpha > 0 or mix_cfg.cutmix_alpha > 0) and mix_cfg.prob > 0
        self.mixup = None
        if self.enabled:
            self.mixup = Mixup(
                mixup_alpha=mix_cfg.mixup_alpha,
                cutmix_alpha=mix_cfg.cutmix_alpha,
                prob=mix_cfg.prob,
                switch_prob=mix_cfg.switch_prob,
                mode=mix_cfg.mode,
                label_smoothing=smoothing,
                num_classes=num_classes,
            )

    def active(self, epoch: int) -> bool:
        return self.enabled and (self.off_epoch is None or epoch < self.off_epoch)

    def mixes(self, x: torch.Tensor, epoch: int) -> bool:
        return self.mixup is not None and self.active(epoch) and len(x) % 2 == 0 and len(x) > 1

    def draw(self, x: torch.Tensor):
        """Mix the images in place with timm's draw for the configured mode; returns lam (a float, or (B, 1))."""
        mix = self.mixup
        assert mix is not None
        # timm's Mixup one-hot encodes integer classes when it mixes targets; its image draw is reused here so
        # soft target rows (labels, values, distributions) get exactly the images' weights
        fn = {"elem": mix._mix_elem, "pair": mix._mix_pair}.get(mix.mode, mix._mix_batch)
        return fn(x)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = self.mix(x, y, epoch)
        return x, y

    def mix(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(images, soft targets, sample weights): as ``__call__``, and a mixed row's weight is
        ``lam * w_a + (1 - lam) * w_b``, the same draw as its image and targets (None stays None)."""
        lam: Any = 1.0
        if self.mixes(x, epoch):
            lam = self.draw(x)  # timm's Mixup.__call__ is this draw followed by mixup_target
        if y.is_floating_point():
            if self.smoothing:
                y = y * (1.0 - self.smoothing) + self.smoothing / 2.0
            if not _unmixed(lam):
                y = y * lam + y.flip(0) * (1.0 - lam)
        else:
            y = mixup_target(y, self.num_classes, lam=lam, smoothing=self.smoothing)
        return x, y, mix_weights(weight, lam)


def _unmixed(lam: Any) -> bool:
    return isinstance(lam, float) and lam == 1.0


def mix_weights(weight: torch.Tensor | None, lam: Any) -> torch.Tensor | None:
    """Sample weights of a batch mixed with ``lam`` (a float, or (B, 1) per row) against its flipped self."""
    if weight is None or _unmixed(lam):
        return weight
    lam_t = torch.as_tensor(lam, dtype=weight.dtype, device=weight.device).reshape(-1)
    return weight * lam_t + weight.flip(0) * (1.0 - lam_t)
