"""One 18-way head against one head per attribute (``heads: attributes``) on a face-mask-contest replica.

The replica has the contest's layout and quirks (``train/train.csv`` one row per person with ids that are
not zero-padded, one id shared by two people, one id with a suffix, a few CSV genders that disagree with
the folder name; ``train/images/<person>/`` with mask1-5, incorrect_mask and normal in mixed .jpg/.jpeg/
.png plus a hidden macOS file; ``eval/info.csv`` with ``ImageID`` = ``<hash>.jpg`` and ``ans`` = 0) and is
built from real Fashion-MNIST images: each 32x32 RGB photo carries one picture per attribute in its own channel.

  red     gender: sandal (male) / sneaker (female), one fixed picture per person
  green   age: t-shirt (< 30) / shirt (30-59) / pullover (60): three classes people confuse, as with age
  blue    mask: a bag (mask1-5, a new picture per photo) / trouser (incorrect_mask) / ankle boot (normal)
  all     faintly, a picture of any class fixed per person (the face: the same in all seven photos)

plus a per-photo shift and brightness change. Ages follow the contest's shape (18-60, only 60-year-olds in
the old band). Both setups read it through ``configs/mask.yaml`` with only the model swapped: same backbone,
same init seed, same budget, same folds (group k-fold by person). They are scored by OOF CV (macro F1 over
the 18 codes) and on held-out persons built from Fashion-MNIST's test split, through ``predict_run``.

    python benchmarks/bench_attributes.py                  # the README run
    python benchmarks/bench_attributes.py --persons 120 --epochs 3   # a quick smoke run

Data and runs go to ``.bench/attributes`` (git-ignored); a rerun reuses the data and finished folds.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_ensemble import _idx  # noqa: E402
from comp._tables import format_table  # noqa: E402
from comp.config import load_config  # noqa: E402
from comp.data._attributes import decompose, marginals, parse_labels  # noqa: E402
from comp.inference import predict_run  # noqa: E402
from comp.metrics import get_metric  # noqa: E402
from comp.run import RunDir  # noqa: E402
from comp.training import train_folds  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TSHIRT, TROUSER, PULLOVER, DRESS, COAT, SANDAL, SHIRT, SNEAKER, BAG, BOOT = range(10)
GENDER = {"male": SANDAL, "female": SNEAKER}
AGE_BAND = [TSHIRT, SHIRT, PULLOVER]
MASK = {"mask": BAG, "incorrect_mask": TROUSER, "normal": BOOT}
STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
EXTENSIONS = (".jpg", ".jpeg", ".png")
SETUPS = {"18-way head": "single", "multi-head": "attributes"}


class Pictures:
    """Fashion-MNIST pictures of one split, drawn by class: each picture once before any repeats."""

    def __init__(self, split: str, rng: np.random.Generator):
        self.images = _idx(FMNIST / f"{split}-images-idx3-ubyte.gz")
        self.labels = _idx(FMNIST / f"{split}-labels-idx1-ubyte.gz")
        self.pools: dict[int, list[int]] = {c: [] for c in range(10)}
        self.rng = rng

    def draw(self, cls: int) -> np.ndarray:
        if not self.pools[cls]:
            self.pools[cls] = list(self.rng.permutation(np.flatnonzero(self.labels == cls)))
        return self.images[self.pools[cls].pop()]


def ages(n: int, rng: np.random.Generator) -> np.ndarray:
    """Contest-shaped ages: about 45% under 30, 47% 30-59, 8% exactly 60."""
    band = rng.choice(3, size=n, p=[0.45, 0.47, 0.08])
    return np.where(band == 0, rng.integers(18, 30, n), np.where(band == 1, rng.integers(30, 60, n), 60))


def photo(
    gender: np.ndarray, age: np.ndarray, mask: np.ndarray, face: np.ndarray, rng: np.random.Generator
) -> Image.Image:
    """One 32x32 RGB photo: gender in red, age in green, mask in blue, the face faintly in all three; shifted
    by up to 2 px and brightened or darkened."""
    canvas = np.zeros((32, 32, 3), np.float32)
    dy, dx = rng.integers(0, 5, 2)
    for c, part in enumerate((gender, age, mask)):
        canvas[dy : dy + 28, dx : dx + 28, c] = 0.75 * part + 0.35 * face
    out = np.clip(canvas * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def person(pictures: Pictures, gender: str, age: int, rng: np.random.Generator) -> dict[str, Image.Image]:
    """The seven photos of one person: gender, age and face pictures fixed, a new mask picture per photo."""
    band = int(np.searchsorted([30, 60], age, "right"))
    fixed = pictures.draw(GENDER[gender]), pictures.draw(AGE_BAND[band]), pictures.draw(int(rng.integers(10)))
    return {
        stem: photo(
            fixed[0],
            fixed[1],
            pictures.draw(MASK["mask" if stem.startswith("mask") else stem]),
            fixed[2],
            rng,
        )
        for stem in STEMS
    }


def make_contest(root: Path, n_train: int, n_eval: int, seed: int = 0) -> Path:
    """The replica: train/ with the contest's quirks, eval/info.csv + eval/images, eval_labels.csv kept aside."""
    if (root / "eval_labels.csv").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    train_pics, eval_pics = Pictures("train", rng), Pictures("t10k", rng)
    genders = rng.choice(["male", "female"], size=n_train + n_eval, p=[0.4, 0.6])
    genders[1] = "female" if genders[0] == "male" else "male"  # the two people sharing id 1 need two folders
    years = ages(n_train + n_eval, rng)
    rows = []
    for i in range(n_train):
        number = i + 1
        csv_id, folder_id = str(number), f"{number:06d}"
        if i == 1:
            csv_id, folder_id = "1", "000001"  # two people share id 1 (the group must be the folder)
        if i == 2:
            csv_id = folder_id = "001498-1"  # an id with a suffix
        folder = f"{folder_id}_{genders[i]}_Asian_{years[i]}"
        csv_gender = genders[i]
        if i % 97 == 5:  # a few CSV rows disagree with the folder name, which the labels follow
            csv_gender = "female" if genders[i] == "male" else "male"
        rows.append({"id": csv_id, "gender": csv_gender, "race": "Asian", "age": years[i], "path": folder})
        for k, (stem, img) in enumerate(person(train_pics, genders[i], years[i], rng).items()):
            path = root / "train" / "images" / folder / f"{stem}{EXTENSIONS[(i + k) % 3]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, quality=95) if path.suffix != ".png" else img.save(path)
    (root / "train" / "images" / rows[0]["path"] / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07")
    pd.DataFrame(rows).to_csv(root / "train" / "train.csv", index=False)
    (root / "eval" / "images").mkdir(parents=True, exist_ok=True)
    labels = parse_labels(load_config(ROOT / "configs" / "mask.yaml").data.labels)
    evals = []
    for i in range(n_train, n_train + n_eval):
        age_band = int(np.searchsorted([30, 60], years[i], "right"))
        for stem, img in person(eval_pics, genders[i], years[i], rng).items():
            name = hashlib.sha1(f"{seed}-{i}-{stem}".encode()).hexdigest() + ".jpg"
            img.save(root / "eval" / "images" / name, quality=95)
            mask = 0 if stem.startswith("mask") else 1 if stem == "incorrect_mask" else 2
            code = int(labels.code_of[mask, ["male", "female"].index(genders[i]), age_band])
            evals.append({"ImageID": name, "code": code})
    order = rng.permutation(len(evals))  # info.csv rows in no particular order, as shipped
    ev = pd.DataFrame(evals).iloc[order]
    ev[["ImageID"]].assign(ans=0).to_csv(root / "eval" / "info.csv", index=False)
    ev.to_csv(root / "eval_labels.csv", index=False)  # written last: marks the replica complete
    return root


def per_attribute(probs: np.ndarray, codes: np.ndarray, scheme) -> dict[str, float]:
    truth = decompose(codes, scheme)
    return {n: f1_score(truth[n], p.argmax(1), average="macro") for n, p in marginals(probs, scheme).items()}


def run_setup(contest: Path, runs: Path, label: str, heads: str, args: argparse.Namespace) -> dict:
    """Train one setup with the recipe (only the model and budget changed), predict the held-out persons."""
    overrides = [
        f"models.0.name={args.model}",
        "models.0.id=model",  # the same id in both runs: the same derived seeds, so the same backbone init
        f"models.0.image_size={args.size}",
        "models.0.pretrained=false",
        f"models.0.heads={heads}",
        f"train.epochs={args.epochs}",
        f"train.lr={args.lr}",
        "train.batch_size=64",
        f"folds.n_splits={args.folds}",
        "data.num_workers=0",
        f"seed={args.seed}",
        f"folds.seed={args.seed}",
        "predict.tta=[]",
        "loss.attributes=null",  # the recipe's per-head losses: leave them out, so only the heads differ
        "loss.label_smoothing=0.05",
    ]
    cfg = load_config(contest / "mask.yaml", overrides=overrides)
    run_dir = runs / heads
    t0 = time.perf_counter()
    result = train_folds(cfg, run_dir, progress=False)
    train_s = time.perf_counter() - t0
    predict_run(run_dir, engine="torch", out=runs / f"{heads}.csv", progress=False)
    run, scheme = RunDir(run_dir), parse_labels(cfg.data.labels)
    oof = run.read_oof("model")
    y = np.asarray(oof.y)
    truth = pd.read_csv(contest / "eval_labels.csv", dtype={"ImageID": str}).set_index("ImageID")["code"]
    test = run.read_test("model").reorder(truth.index.to_numpy())
    codes = truth.to_numpy()
    return {
        "setup": label,
        "cv": result.models["model"].cv,
        "held_out": get_metric(cfg.metric)(codes, test.probs),
        "cv_attr": per_attribute(oof.probs, y, scheme),
        "held_attr": per_attribute(test.probs, codes, scheme),
        "train_s": train_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--persons", type=int, default=200, help="training persons (7 photos each)")
    p.add_argument("--eval-persons", type=int, default=100, help="held-out persons (7 photos each)")
    p.add_argument("--model", default="test_efficientnet")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=42, help="training and fold seed (the replica's is fixed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "attributes")
    args = p.parse_args(argv)
    if not FMNIST.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install -y dataset-fashion-mnist")
    torch.set_num_threads(args.threads)
    tag = f"p{args.persons}-e{args.eval_persons}"
    contest = make_contest(args.out / f"contest-{tag}", args.persons, args.eval_persons)
    shutil.copy(ROOT / "configs" / "mask.yaml", contest / "mask.yaml")  # the recipe as shipped, in the contest folder
    runs = args.out / f"runs-{tag}-{args.model}-{args.size}px-{args.epochs}ep-{args.folds}f-s{args.seed}"
    t0 = time.perf_counter()
    with threadpool_limits(args.threads):
        results = [run_setup(contest, runs, label, heads, args) for label, heads in SETUPS.items()]
    n_train, n_eval = 7 * args.persons, 7 * args.eval_persons
    print(
        f"{args.model} {args.size}px, {args.epochs} epochs, {args.folds}-fold group k-fold by person, seed {args.seed}, "
        f"{n_train} train photos ({args.persons} persons), {n_eval} held-out photos; macro F1 over the 18 codes"
    )
    rows = []
    for r in results:
        row = {"setup": r["setup"], "cv": r["cv"], "held_out": r["held_out"]}
        row.update({f"cv_{k}": v for k, v in r["cv_attr"].items()})
        row.update({f"held_{k}": v for k, v in r["held_attr"].items()})
        row["train_s"] = r["train_s"]
        rows.append(row)
    print(format_table(rows))
    a, b = results
    print(
        f"multi-head - 18-way: CV {b['cv'] - a['cv']:+.4f}, held-out {b['held_out'] - a['held_out']:+.4f}. "
        f"Total {time.perf_counter() - t0:.0f}s."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
