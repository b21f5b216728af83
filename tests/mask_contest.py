"""A tiny replica of the boostcamp face-mask contest folder, with its quirks, and specs that read it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

# the shipped recipe, and overrides that make it train in seconds on the synthetic contest
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "mask.yaml"
TINY = [
    "models.0.name=test_efficientnet",
    "models.0.image_size=32",
    "models.0.pretrained=false",
    "train.epochs=1",
    "folds.n_splits=2",
    "data.num_workers=0",
    "train.batch_size=8",
]

STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
EXTENSIONS = (".jpg", ".jpeg", ".png")

# id, gender, race, age, folder: id '1' is two people; '001498-1' carries a suffix; person '5' is
# female in the CSV but male in its folder name (the contest's labels follow the folder)
PERSONS = (
    ("1", "female", "Asian", "45", "000001_female_Asian_45"),
    ("1", "male", "Asian", "29", "000001_male_Asian_29"),
    ("001498-1", "female", "Asian", "30", "001498-1_female_Asian_30"),
    ("4", "male", "Asian", "59", "000004_male_Asian_59"),
    ("5", "female", "Asian", "60", "000005_male_Asian_60"),
    ("6", "male", "Asian", "18", "000006_male_Asian_18"),
)
DISAGREEING = "000005_male_Asian_60"
N_EVAL = 4

LAYOUT: dict[str, Any] = {
    "csv": "train/train.csv",
    "folder": "train/images/{path}",
    "files": "*",
    "fields": {
        "folder": r"(?P<pid>[^_]+)_(?P<folder_gender>[^_]+)_(?P<folder_race>[^_]+)_(?P<folder_age>\d+)",
        "stem": r"(?P<mask>mask[1-5]|incorrect_mask|normal)",
    },
    "per_folder": 7,
    "id": "{path}/{stem}",
    "group": "{path}",
}

MASK_MAP = {f"mask{i}": "wear" for i in range(1, 6)} | {"incorrect_mask": "incorrect", "normal": "not_wear"}
LABELS: dict[str, Any] = {
    "attributes": {
        "mask": {"source": "mask", "map": MASK_MAP, "values": ["wear", "incorrect", "not_wear"]},
        "gender": {"source": "folder_gender", "values": ["male", "female"]},
        "age": {
            "source": "folder_age",
            "bins": [30, 60],
            "train_bins": [30, 58],
            "values": ["young", "middle", "old"],
        },
    },
    "code": "mask * 6 + gender * 3 + age",
}


def write_image(path: Path, seed: int) -> None:
    """A tiny random picture in the format its extension names."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def write_mask_contest(root: Path) -> Path:
    """train/train.csv, train/images/<person>/<7 photos>, eval/info.csv and eval/images/<ImageID>."""
    images = root / "train" / "images"
    for p, (_, _, _, _, folder) in enumerate(PERSONS):
        for k, stem in enumerate(STEMS):
            write_image(images / folder / f"{stem}{EXTENSIONS[(p + k) % len(EXTENSIONS)]}", seed=p * 10 + k)
    (images / PERSONS[0][4] / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (images / PERSONS[1][4] / ".DS_Store").write_bytes(b"\x00")
    (images / PERSONS[2][4] / "notes.txt").write_text("not an image")
    cols = ["id", "gender", "race", "age", "path"]
    pd.DataFrame([dict(zip(cols, (i, g, r, a, f))) for i, g, r, a, f in PERSONS]).to_csv(
        root / "train" / "train.csv", index=False
    )
    ids = [hashlib.sha1(str(i).encode()).hexdigest() + ".jpg" for i in range(N_EVAL)]
    for i, name in enumerate(ids):
        write_image(root / "eval" / "images" / name, seed=100 + i)
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(root / "eval" / "info.csv", index=False)
    return root
