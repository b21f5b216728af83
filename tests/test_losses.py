import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comp.errors import CompError
from comp.training._losses import LOSSES, SoftCrossEntropy, SoftFocal, class_weights


def test_soft_ce_matches_torch_on_hard_targets():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    ours = SoftCrossEntropy()(logits, F.one_hot(y, 4).float())
    assert torch.allclose(ours, F.cross_entropy(logits, y))


def test_focal_gamma0_is_ce_and_downweights_easy():
    logits, y = torch.randn(6, 4), F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    assert torch.allclose(SoftFocal(gamma=0.0)(logits, y), SoftCrossEntropy()(logits, y))
    assert SoftFocal(gamma=2.0)(logits, y) < SoftCrossEntropy()(logits, y)


def test_class_weights_match_torch_weighted_ce():
    logits, y = torch.randn(8, 3), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    w = class_weights("balanced", y.numpy(), 3)
    assert np.allclose(w.numpy(), 8 / (3 * np.array([3, 2, 3])))
    ours = SoftCrossEntropy(w)(logits, F.one_hot(y, 3).float())
    assert torch.allclose(ours, F.cross_entropy(logits, y, weight=w), atol=1e-6)


def test_class_weight_list_validated():
    assert class_weights("none", np.array([0, 1]), 2) is None
    with pytest.raises(CompError, match="must list 3"):
        class_weights([1.0, 2.0], np.array([0]), 3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains_toward_the_target(name):
    torch.manual_seed(0)
    logits = torch.zeros(4, 3, requires_grad=True)
    target = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    loss_fn = LOSSES[name]()
    opt = torch.optim.SGD([logits], lr=1.0)
    first = None
    for _ in range(20):
        loss = loss_fn(logits, target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


def test_a_non_finite_loss_stops_the_epoch_before_the_weights_change():
    from comp.training._engine import StepConfig, train_one_epoch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def nan_loss(logits, target):
        return (logits * float("nan")).sum()

    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 0 step 0; lower train.lr"):
        train_one_epoch(model, loader, opt, nan_loss, lambda x, y, e: (x, y), 0, StepConfig(torch.device("cpu")))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stats = train_one_epoch(
        model,
        loader,
        opt,
        torch.nn.functional.cross_entropy,
        lambda x, y, e: (x, y),
        0,
        StepConfig(torch.device("cpu")),
    )
    assert stats["steps"] == 3 and np.isfinite(stats["loss"]) and stats["loss"] > 0
