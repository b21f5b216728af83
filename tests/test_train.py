"""train-folds end to end on the toy competition: artifacts, invariants, options, resume, CLI errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import check_no_leak, tiny_config, write_config

from comp.cli import main
from comp.config import ModelConfig, load_config
from comp.errors import CompError
from comp.training._fold import FoldTrainer
from comp.training._models import model_from_checkpoint
from comp.training._trainer import train_folds


def _train(comp_dir, run_dir, **kw):
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir, **kw)))
    return cfg, train_folds(cfg, run_dir, progress=False)


def test_run_artifacts_contract(trained_run):
    train = pd.read_csv(trained_run.parent / "comp" / "train.csv", dtype=str)
    folds = pd.read_csv(trained_run / "folds.csv", dtype={"id": str})
    assert list(folds.columns) == ["id", "fold"] and len(folds) == len(train)
    check_no_leak(folds["fold"].to_numpy(), train.set_index("id").loc[folds["id"], "person"].to_numpy())
    oof = pd.read_csv(trained_run / "models/eff/oof.csv", dtype={"id": str, "target": str})
    assert list(oof.columns) == ["id", "fold", "target", "c0", "c1", "c2"]
    assert sorted(oof["id"]) == sorted(train["id"]) and not oof["id"].duplicated().any()
    assert np.allclose(oof[["c0", "c1", "c2"]].sum(axis=1), 1, atol=1e-4)
    merged = oof.merge(folds, on="id", suffixes=("", "_f"))
    assert (merged["fold"] == merged["fold_f"]).all()
    metrics = json.loads((trained_run / "models/eff/metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and len(metrics["folds"]) == 2 and 0 <= metrics["cv"] <= 1
    assert (trained_run / "config.yaml").is_file()
    assert not list(trained_run.glob("models/eff/*.state.pt")) and not list(trained_run.rglob(".*.tmp"))


def test_checkpoint_describes_itself(trained_run):
    path = trained_run / "models/eff/fold0.pt"
    raw = torch.load(path, weights_only=True)
    for key in ("model_name", "classes", "image_size", "mean", "std", "eval_transform", "config", "state_dict"):
        assert key in raw
    assert (
        raw["model_name"] == "test_efficientnet"
        and raw["classes"] == ["c0", "c1", "c2"]
        and raw["image_size"] == [32, 32]
    )
    model, ckpt = model_from_checkpoint(path)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    # the saved OOF probabilities come from exactly these weights and this eval transform
    from comp.data._augment import from_dict
    from comp.data._table import load_image

    oof = pd.read_csv(trained_run / "models/eff/oof.csv", dtype={"id": str}).query("fold == 0").head(4)
    tf = from_dict(ckpt.meta.eval_transform)
    x = torch.stack([tf(image=load_image(trained_run.parent / "comp/train" / f"{i}.png"))["image"] for i in oof["id"]])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).numpy()
    assert np.allclose(probs, oof[["c0", "c1", "c2"]].to_numpy(), atol=1e-5)


def test_learns_the_toy_task(comp_dir, tmp_path):
    _, summary = _train(comp_dir, tmp_path / "run", train__epochs=3)
    assert summary.models["eff"].cv > 0.6  # chance is 1/3


def test_resume_equals_uninterrupted(comp_dir, tmp_path, monkeypatch):
    kw = {"train__epochs": 3, "augment__mixup": {"cutmix_alpha": 1.0, "mixup_alpha": 0.4}, "folds__n_splits": 2}
    _train(comp_dir, tmp_path / "full", **kw)

    real_save = FoldTrainer.save_state
    calls = {"n": 0}

    def save_then_die(self):
        real_save(self)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # killed right after epoch 1 of fold 0 was saved

    monkeypatch.setattr(FoldTrainer, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(comp_dir, tmp_path / "killed", **kw)
    monkeypatch.setattr(FoldTrainer, "save_state", real_save)
    assert (tmp_path / "killed/models/eff/fold0.state.pt").is_file()
    assert not (tmp_path / "killed/models/eff/oof.csv").exists()
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir, **kw)))
    with pytest.raises(CompError, match="pass resume=True"):
        train_folds(cfg, tmp_path / "killed", progress=False)
    train_folds(cfg, tmp_path / "killed", resume=True, progress=False)
    a = pd.read_csv(tmp_path / "full/models/eff/oof.csv")
    b = pd.read_csv(tmp_path / "killed/models/eff/oof.csv")
    pd.testing.assert_frame_equal(a, b)


def test_folds_subset_then_rest_never_retrains(comp_dir, tmp_path):
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir)))
    s = train_folds(cfg, tmp_path / "run", folds=[1], progress=False)
    assert s.models["eff"].cv is None and not (tmp_path / "run/models/eff/oof.csv").exists()
    before = (tmp_path / "run/models/eff/fold1.pt").stat().st_mtime_ns
    s = train_folds(cfg, tmp_path / "run", folds=[0, 1], progress=False)
    assert s.models["eff"].folds[1].skipped and s.models["eff"].cv is not None
    assert (tmp_path / "run/models/eff/fold1.pt").stat().st_mtime_ns == before


def test_other_config_refused_in_existing_run(comp_dir, tmp_path):
    _train(comp_dir, tmp_path / "run")
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir, train__lr=0.5)))
    with pytest.raises(CompError, match="keys differ: train.lr"):
        train_folds(cfg, tmp_path / "run", progress=False)


OPTIONS = {
    "mixup+cutmix": {"augment__mixup": {"cutmix_alpha": 1.0, "mixup_alpha": 0.2, "prob": 1.0, "off_epoch": 1}},
    "focal+balanced": {"loss": {"name": "focal", "class_weights": "balanced", "label_smoothing": 0.1}},
    "class weights list": {"loss": {"class_weights": [1.0, 2.0, 0.5]}},
    "sgd+clip+no sched": {"train__optimizer": "sgd", "train__grad_clip": 1.0, "train__scheduler": "none"},
    "ema": {"train__ema": True, "train__ema_decay": 0.5},
    "channels_last+bf16": {"train__channels_last": True, "train__amp": "bf16"},
    "rand resized crop": {
        "augment__train": [{"name": "RandomResizedCrop", "scale": [0.5, 1.0]}, {"name": "VerticalFlip"}]
    },
    "resnet family": {"models": [{"name": "test_resnet", "image_size": [32, 24], "epochs": 1}]},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_trains(comp_dir, tmp_path, name):
    _, summary = _train(comp_dir, tmp_path / "run", **OPTIONS[name])
    (mid,) = summary.models
    assert np.isfinite(summary.models[mid].cv)
    hist = pd.read_csv(tmp_path / f"run/models/{mid}/fold0.history.csv")
    assert np.isfinite(hist["loss"]).all()


def test_freeze_epochs_keep_backbone_fixed(comp_dir, tmp_path, monkeypatch):
    snapshots = []
    real = FoldTrainer.run_epoch

    def spy(self, epoch):
        row = real(self, epoch)
        snapshots.append({k: v.clone() for k, v in self.model.state_dict().items() if k.startswith("conv_stem")})
        return row

    monkeypatch.setattr(FoldTrainer, "run_epoch", spy)
    init = {}
    real_init = FoldTrainer.__init__

    def init_spy(self, ctx):
        real_init(self, ctx)
        if not init:  # fold 0 only
            init.update({k: v.clone() for k, v in self.model.state_dict().items() if k.startswith("conv_stem")})

    monkeypatch.setattr(FoldTrainer, "__init__", init_spy)
    _train(comp_dir, tmp_path / "run", train__epochs=2, train__freeze_epochs=1, folds__n_splits=2)
    assert all(torch.equal(init[k], snapshots[0][k]) for k in init)  # frozen in epoch 1 (fold 0)
    assert any(not torch.equal(init[k], snapshots[1][k]) for k in init)  # trained in epoch 2


def test_early_stopping_stops(comp_dir, tmp_path):
    _train(
        comp_dir, tmp_path / "run", train__epochs=6, train__early_stopping=1, train__lr=1e-9, train__scheduler="none"
    )
    hist = pd.read_csv(tmp_path / "run/models/eff/fold0.history.csv")
    assert len(hist) < 6


def test_local_pretrained_weights_file(comp_dir, tmp_path):
    import timm

    donor = timm.create_model("test_efficientnet", num_classes=10)
    torch.save(donor.state_dict(), tmp_path / "w.pth")
    from comp.training._models import create_model

    model = create_model(ModelConfig("test_efficientnet", pretrained=str(tmp_path / "w.pth")), num_classes=3)
    assert torch.equal(model.state_dict()["conv_stem.weight"], donor.state_dict()["conv_stem.weight"])
    assert model.get_classifier().out_features == 3


def test_unknown_model_suggests_closest():
    from comp.training._models import create_model

    with pytest.raises(CompError, match="did you mean 'resnet18'"):
        create_model(ModelConfig("resnet18x"), 3)


# ------------------------------------------------------------------ CLI


def test_cli_train_folds_and_errors(comp_dir, tmp_path):
    cfg_path = write_config(comp_dir, tiny_config(comp_dir))
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "train-folds",
            "--config",
            str(cfg_path),
            "--run-dir",
            str(tmp_path / "r"),
            "--quiet",
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "CV" in res.output and (tmp_path / "r/models/eff/oof.csv").is_file()
    res = runner.invoke(main, ["train-folds", "--config", str(cfg_path), "--set", "train.epochz=1"])
    assert res.exit_code == 2 and "train.epochz" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        main, ["train-folds", "--config", str(cfg_path), "--run-dir", str(tmp_path / "r"), "--folds", "7"]
    )
    assert res.exit_code == 2 and "folds are numbered 0..1" in res.output


def test_cli_bad_csv_leaves_nothing(comp_dir, tmp_path):
    (comp_dir / "train.csv").write_text("id,label,person\n")
    cfg_path = write_config(comp_dir, tiny_config(comp_dir))
    res = CliRunner().invoke(main, ["train-folds", "--config", str(cfg_path), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "train.csv" in res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [[], *([c] for c in main.commands)])
def test_help(command):
    """Every registered command (new ones included for free) has help with an example."""
    res = CliRunner().invoke(main, [*command, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output
    if command:
        assert f"Example: comp {command[0]}" in " ".join(res.output.split()), res.output


@pytest.mark.gpu
def test_cuda_amp_fp16_and_bf16(comp_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    for amp in ("fp16", "bf16"):
        _, s = _train(comp_dir, tmp_path / amp, device="cuda", train__amp=amp, train__channels_last=True)
        assert np.isfinite(s.models["eff"].cv)


def test_device_normalize_matches_albumentations():
    """Loaders yield uint8; DeviceNormalize on the batch must equal A.Normalize in the worker."""
    import torch

    from comp.data._augment import DeviceNormalize, eval_pipeline

    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = eval_pipeline((16, 16), mean, std)(image=img)["image"]
    u8 = eval_pipeline((16, 16), mean, std, normalize=False)(image=img)["image"]
    assert u8.dtype == np.uint8 and u8.shape == (16, 16, 3) and ref.dtype == torch.float32
    batch = torch.utils.data.default_collate([u8, u8])  # what the loader hands over: (B, H, W, C) uint8
    out = DeviceNormalize(mean, std, torch.device("cpu"))(batch)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out[1], ref, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous()
    cl = DeviceNormalize(mean, std, torch.device("cpu"), channels_last=True)(batch)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)


def test_fold_lock_keeps_two_processes_off_one_fold(comp_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from comp.run import RunDir
    from comp.training._trainer import train_folds

    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir, train__max_steps_per_epoch=1, train__epochs=1)))
    run_dir = tmp_path / "run"
    lock = RunDir(run_dir).model_dir("eff") / "fold0.lock"
    lock.parent.mkdir(parents=True)
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"host": host, "pid": sleeper.pid, "since": "2026-01-01 00:00:00"}))
        with pytest.raises(CompError, match=rf"eff fold 0 is being trained by pid {sleeper.pid} on {host}.*fold0.lock"):
            train_folds(cfg, run_dir, folds=[0], progress=False)
        assert not RunDir(run_dir).checkpoint("eff", 0).exists()
        lock.write_text(json.dumps({"host": "elsewhere", "pid": os.getpid()}))  # another machine: cannot be checked
        with pytest.raises(CompError, match="delete .*fold0.lock if that run is dead"):
            train_folds(cfg, run_dir, folds=[0], progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock left by a process that has died (killed run) is taken over
    lock.write_text(json.dumps({"host": host, "pid": sleeper.pid, "since": "2026-01-01 00:00:00"}))
    train_folds(cfg, run_dir, folds=[0], progress=False)
    assert RunDir(run_dir).checkpoint("eff", 0).is_file()
    assert not list(lock.parent.glob("*.lock")) and not list(lock.parent.glob(".*stale"))
