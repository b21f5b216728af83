"""The fine-tuning toolbox: gradient accumulation, layer-wise LR decay and the head's LR, SWA, progressive
resizing and the balanced sampler, each against what it promises."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from comp.config import TrainConfig, load_config
from comp.errors import ConfigError
from comp.run import RunDir, load_checkpoint
from comp.training import train_folds
from comp.training._loaders import make_loader, sampling_weights
from comp.training._optim import make_optimizer, make_scheduler, set_lr
from tests.conftest import tiny_config, write_competition, write_config

NO_BN = [{"name": "test_efficientnet_gn", "id": "eff", "image_size": 32}]  # GroupNorm: batch-size independent


def _train(root, run, **over):
    cfg = load_config(write_config(root, tiny_config(root, **over), name=f"{run.name}.yaml"))
    train_folds(cfg, run, progress=False, folds=[0])
    return load_checkpoint(RunDir(run).checkpoint("eff", 0)).state_dict


def test_accumulating_two_micro_batches_equals_one_batch_twice_the_size(tmp_path):
    """accum_steps=2 x 16 rows gives the weights of 32-row batches (a GroupNorm model: no batch statistics),
    with a short last group, grad clipping on the accumulated gradient, and the schedule per optimizer step."""
    root = write_competition(tmp_path / "comp", n_groups=24, per_group=3)
    common = dict(models=NO_BN, train__epochs=2, train__warmup_epochs=0.5, train__grad_clip=0.5, train__lr=0.003)
    big = _train(root, tmp_path / "big", train__batch_size=32, **common)
    small = _train(root, tmp_path / "small", train__batch_size=16, train__accum_steps=2, **common)
    plain = _train(root, tmp_path / "plain", train__batch_size=16, **common)
    for k in big:
        torch.testing.assert_close(small[k], big[k], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(plain[k], big[k], atol=1e-4) for k in big)  # the test can fail


def test_layer_decay_and_head_lr_are_the_learning_rates_the_optimizer_uses():
    model = timm.create_model("test_efficientnet", num_classes=3)
    tcfg = TrainConfig(lr=0.01, layer_decay=0.5, head_lr_scale=10.0, warmup_epochs=1, epochs=3)
    opt = make_optimizer(model, tcfg)

    def lr_of(param) -> float:
        return next(g["lr"] for g in opt.param_groups if any(p is param for p in g["params"]))

    first, last, head = model.conv_stem.weight, model.blocks[-1][-1].conv_pw.weight, model.get_classifier().weight
    assert lr_of(head) == pytest.approx(0.1) and lr_of(first) < lr_of(last) < 0.01  # written into every group
    sched = make_scheduler(opt, tcfg, steps_per_epoch=10)
    assert lr_of(head) == pytest.approx(10 * 0.01 * tcfg.min_lr_ratio)  # warm-up starts low, scaled per group
    sched.step_update(10)  # the end of warm-up: the schedule's peak
    n_layers = round(np.log(lr_of(first) / 0.01) / np.log(0.5))
    assert lr_of(head) == pytest.approx(0.1) and lr_of(last) == pytest.approx(0.005)
    assert lr_of(first) == pytest.approx(0.01 * 0.5**n_layers) and n_layers >= 3
    set_lr(opt, 0.002)  # the frozen warm-up and scheduler: none set the LR through the same scales
    assert lr_of(head) == pytest.approx(0.02) and lr_of(last) == pytest.approx(0.001)
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert any(any(p is model.bn1.weight for p in g["params"]) for g in no_decay)  # norms keep no weight decay


def test_swa_averages_from_its_epoch_resumes_exactly_and_recomputes_batchnorm(tmp_path, monkeypatch):
    from comp.training._fold import FoldTrainer

    root = write_competition(tmp_path / "comp")
    over = dict(train__epochs=3, train__swa_start=1, train__swa_lr=0.002, train__swa_anneal_epochs=0.5)
    cfg = load_config(write_config(root, tiny_config(root, **over)))
    train_folds(cfg, tmp_path / "whole", progress=False, folds=[0])
    seen = {}
    real_fit = FoldTrainer.fit

    def spy(self):
        out = real_fit(self)
        seen["n"], seen["lr"] = self.swa.n_averaged, self.optimizer.param_groups[0]["lr"]
        return out

    monkeypatch.setattr(FoldTrainer, "fit", spy)
    calls = {"n": 0}
    real_save = FoldTrainer.save_state

    def die_after_second(self):
        real_save(self)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(FoldTrainer, "save_state", die_after_second)
    with pytest.raises(KeyboardInterrupt):
        train_folds(cfg, tmp_path / "resumed", progress=False, folds=[0])
    monkeypatch.setattr(FoldTrainer, "save_state", real_save)
    train_folds(cfg, tmp_path / "resumed", progress=False, folds=[0], resume=True)
    a = load_checkpoint(RunDir(tmp_path / "whole").checkpoint("eff", 0)).state_dict
    b = load_checkpoint(RunDir(tmp_path / "resumed").checkpoint("eff", 0)).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed inside the SWA phase: bit-exact
    assert seen["n"] == 2 and seen["lr"] == pytest.approx(0.002)  # epochs 1 and 2 averaged; the ramp reached swa_lr


def test_swa_batchnorm_statistics_are_those_of_the_averaged_weights():
    from comp.config import TrainConfig
    from comp.training._swa import SWA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    swa = SWA(model, TrainConfig(epochs=3, swa_start=0), steps_per_epoch=1)
    w0 = model[0].weight.detach().clone()
    swa.update(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    swa.update(model)
    torch.testing.assert_close(swa.module[0].weight, w0 + 0.5)  # the mean of the two epochs' weights
    batches = [(torch.randn(8, 3, 6, 6), None) for _ in range(3)]
    swa.update_bn(batches, lambda batch: (batch[0],))  # prepare: a batch -> the model's inputs
    with torch.no_grad():
        feats = torch.cat([swa.module[0](x) for x, _ in batches])
    torch.testing.assert_close(swa.module[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "train, needle",
    [
        ({"epochs": 2, "swa_start": 2}, "swa_start"),
        ({"swa_start": 1, "ema": True}, "both average"),
        ({"size_schedule": [[1, 24], [2, 32]]}, "start at epoch 0"),
        ({"size_schedule": [[0, 24], [1, 28]]}, "ends at"),
        ({"size_schedule": [[0, "big"]]}, "size_schedule"),
        ({"sampler": "uniform"}, "sampler"),
        ({"accum_steps": 0}, "accum_steps"),
        ({"layer_decay": 1.5}, "layer_decay"),
    ],
)
def test_toolbox_keys_are_checked(tmp_path, train, needle):
    raw = {"train": {"epochs": 3, **train}, "models": [{"name": "test_efficientnet", "image_size": 32}]}
    with pytest.raises(ConfigError, match=needle):
        load_config(raw)


def test_progressive_resizing_trains_small_first_and_keeps_the_final_size_everywhere(tmp_path):
    from comp.training._context import FoldContext
    from comp.training._fold import FoldTrainer
    from comp.training._prepare import plan_folds

    root = write_competition(tmp_path / "comp")
    cfg = load_config(write_config(root, tiny_config(root, train__epochs=3, train__size_schedule=[[0, 16], [2, 32]])))
    from comp.data._table import load_train_table

    table = load_train_table(cfg.data)
    run = RunDir(tmp_path / "run")
    folds, _ = plan_folds(cfg, run, table)
    trainer = FoldTrainer(FoldContext(cfg, cfg.models[0], table, folds, 0, run, progress=False))
    sizes = []
    for epoch in range(3):
        trainer._resize(epoch)
        sizes.append(trainer.train_ds[int(trainer.train_idx[0])][0].shape[:2])
    assert sizes == [(16, 16), (16, 16), (32, 32)]
    assert trainer.valid_ds[0][0].shape[:2] == (32, 32)  # validation at the final size from the first epoch
    train_folds(cfg, tmp_path / "run2", progress=False, folds=[0])
    assert load_checkpoint(RunDir(tmp_path / "run2").checkpoint("eff", 0)).meta.image_size == (32, 32)


def test_balanced_sampling_draws_classes_evenly_and_the_same_rows_for_the_same_seed():
    y = np.array([0] * 90 + [1] * 10)
    w = sampling_weights("balanced", y, "classification")
    assert w is not None and w[y == 1].sum() == pytest.approx(0.5)
    ratio = sampling_weights([1.0, 3.0], y, "classification")
    assert ratio is not None and ratio[y == 1].sum() == pytest.approx(0.75)
    Y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    wm = sampling_weights("balanced", Y, "multilabel")
    assert wm is not None and wm[3] == pytest.approx(wm[:3].sum())  # the rare label's row weighs all of the common's
    wr = sampling_weights("balanced", np.arange(100.0), "regression")
    assert wr is not None and np.allclose(wr, 0.01)  # equal deciles: uniform
    ds = list(range(100))

    def order(seed):
        loader = make_loader(ds, np.arange(100), 10, True, seed, 0, False, torch.device("cpu"), weights=w)
        return [int(v) for b in loader for v in b]

    first = order(5)
    assert first == order(5) and first != order(6)  # re-drawn every epoch (its seed), the same when resumed
    assert 0.3 < np.mean(np.asarray(first) >= 90) < 0.7  # the minority class is half of what is drawn


# ---------------------------------------------------------------- pretrained weights, offline


def _reference_state():
    torch.manual_seed(7)
    return timm.create_model("test_efficientnet", num_classes=1000).state_dict()


@pytest.mark.parametrize("form", ["safetensors", "pth", "bin", "hub-folder"])
def test_pretrained_path_takes_a_file_or_a_hub_folder(tmp_path, form):
    from safetensors.torch import save_file

    from comp.config import ModelConfig
    from comp.training._models import create_model

    state = _reference_state()
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif form == "hub-folder":
        from timm.models import save_for_hf

        model = timm.create_model("test_efficientnet", num_classes=1000)
        model.load_state_dict(state)
        path = tmp_path / "test_efficientnet"
        save_for_hf(model, str(path), safe_serialization=True)
    else:
        path = tmp_path / f"w.{form}"
        torch.save(state, path)
    model = create_model(ModelConfig("test_efficientnet", pretrained=str(path)), num_classes=3)
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert model.get_classifier().out_features == 3  # the classifier adapted to the competition


def test_pretrained_problems_say_where_comp_looked(tmp_path):
    from comp.config import ModelConfig
    from comp.errors import CompError
    from comp.training._models import create_model

    with pytest.raises(CompError, match="not found.*comp weights --config"):
        create_model(ModelConfig("test_efficientnet", pretrained=str(tmp_path / "nope.safetensors")), 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompError, match="holds no model.safetensors or pytorch_model.bin"):
        create_model(ModelConfig("test_efficientnet", pretrained=str(tmp_path / "empty")), 3)
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet"), str(tmp_path / "other"), safe_serialization=True)
    with pytest.raises(CompError, match="holds 'test_resnet'"):
        create_model(ModelConfig("test_efficientnet", pretrained=str(tmp_path / "other")), 3)


def _hub_cache(root, state):
    """A Hugging Face cache holding timm/test_efficientnet.r160_in1k as the hub would leave it."""
    from safetensors.torch import save_file

    repo = root / "models--timm--test_efficientnet.r160_in1k"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    save_file(state, str(snap / "model.safetensors"))
    return root


def _run_offline(code: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_pretrained_true_loads_offline_from_the_hugging_face_cache(tmp_path):
    state = _reference_state()
    cache = _hub_cache(tmp_path / "hf" / "hub", state)
    torch.save(state["conv_stem.weight"], tmp_path / "ref.pt")
    code = (
        "import torch; from comp.config import ModelConfig; from comp.training._models import create_model; "
        "from comp.training._weights import check_hub_weights; check_hub_weights('test_efficientnet'); "
        "m = create_model(ModelConfig('test_efficientnet', pretrained=True), 3); "
        f"assert torch.equal(m.state_dict()['conv_stem.weight'], torch.load(r'{tmp_path / 'ref.pt'}')); print('ok')"
    )
    proc = _run_offline(code, cache)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
    empty = tmp_path / "empty" / "hub"
    empty.mkdir(parents=True)
    proc = _run_offline(
        "from comp.training._weights import check_hub_weights; check_hub_weights('test_efficientnet')", empty
    )
    assert (
        "not in the Hugging Face cache" in proc.stderr
        and str(empty) in proc.stderr
        and "HF_HUB_OFFLINE=1" in proc.stderr
    )


def test_train_folds_refuses_missing_offline_weights_before_writing(tmp_path):
    root = write_competition(tmp_path / "comp")
    cfg_path = write_config(
        root,
        tiny_config(root, models=[{"name": "test_efficientnet", "id": "eff", "image_size": 32, "pretrained": True}]),
    )
    empty = tmp_path / "hub"
    empty.mkdir()
    code = (
        "import sys; from click.testing import CliRunner; from comp.cli import main; "
        f"r = CliRunner().invoke(main, ['train-folds', '--config', r'{cfg_path}', '--run-dir', r'{tmp_path / 'run'}']); "
        "print(r.output); sys.exit(r.exit_code)"
    )
    proc = _run_offline(code, empty)
    assert proc.returncode == 2 and "comp weights --config" in proc.stdout, proc.stdout + proc.stderr[-1000:]
    assert not (tmp_path / "run").exists()


def test_comp_weights_writes_hub_folders_comp_loads_back(tmp_path, monkeypatch):
    """The download is replaced (no internet here); the folder it writes is loaded for real."""
    from click.testing import CliRunner

    import comp.training._weights as W
    from comp.cli import main

    real_create = timm.create_model
    monkeypatch.setattr(W, "check_hub_weights", lambda name: None)
    monkeypatch.setattr(
        W.timm, "create_model", lambda name, pretrained=False, **kw: real_create(name, pretrained=False, **kw)
    )
    root = write_competition(tmp_path / "comp")
    cfg_path = write_config(
        root,
        tiny_config(root, models=[{"name": "test_efficientnet", "id": "eff", "image_size": 32, "pretrained": True}]),
    )
    res = CliRunner().invoke(main, ["weights", "--config", str(cfg_path), "--out", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "w" / "test_efficientnet"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (tmp_path / "w" / "dataset-metadata.json").is_file()
    monkeypatch.setattr(W.timm, "create_model", real_create)
    cfg = load_config(
        write_config(
            root,
            tiny_config(
                root, models=[{"name": "test_efficientnet", "id": "eff", "image_size": 32, "pretrained": str(folder)}]
            ),
            name="b.yaml",
        )
    )
    train_folds(cfg, tmp_path / "run", progress=False, folds=[0])
