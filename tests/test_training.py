"""The shared training loop: learning-rate schedules at known steps, and max_steps overriding epochs."""

import math
from types import SimpleNamespace

import pytest
import torch

from alignkit.training import fit, make_accelerator, make_optimizer, seeded_loader

LR = 0.1


def config(**overrides):
    return SimpleNamespace(**{"lr": LR, "weight_decay": 0.0, "warmup_ratio": 0.1, "lr_scheduler": "linear",
                              "max_steps": None, "epochs": 1, "max_grad_norm": 1.0, **overrides})


def lrs(schedule, total=100):
    """The learning rate used at each of `total` optimizer steps."""
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = make_optimizer(model, config(lr_scheduler=schedule), total)
    out = []
    for _ in range(total):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("schedule, at_55, at_99", [
    # 10 warmup steps, then 90 to decay over. Step 55 is 45 of 90 into the decay: linear 0.1 x 45/90 = 0.05;
    # cosine 0.1 x 0.5 (1 + cos(pi x 45/90)) = 0.05 as well; at step 99 (89 of 90): linear 0.1 x 1/90 = 0.001111,
    # cosine 0.1 x 0.5 (1 + cos(pi x 89/90)) = 0.1 x 0.5 x (1 - 0.9993908) = 0.00003046; constant stays 0.1.
    ("linear", 0.05, 0.0011111), ("cosine", 0.05, 0.00003046), ("constant_with_warmup", 0.1, 0.1)])
def test_schedules_at_known_steps(schedule, at_55, at_99):
    got = lrs(schedule)
    assert got[0] == 0.0 and math.isclose(got[5], 0.05, rel_tol=1e-9)  # warmup: 0.1 x 5/10
    assert math.isclose(got[10], LR, rel_tol=1e-9)  # the peak, when warmup ends
    assert math.isclose(got[55], at_55, rel_tol=1e-6) and math.isclose(got[99], at_99, rel_tol=1e-3)
    if schedule == "cosine":
        assert got[30] > lrs("linear")[30]  # cosine stays higher early in the decay


def test_max_steps_overrides_epochs_and_stops_part_way(tmp_path):
    """12 examples in batches of 4 make 3 steps an epoch; max_steps 7 runs epochs of 3, 3 and 1 steps,
    evaluating before training and after each of the 3 epochs, and the schedule spans the 7 steps."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    data = [(torch.randn(2), torch.randn(1)) for _ in range(12)]
    loader = seeded_loader(data, 4, 0, lambda items: tuple(torch.stack(x) for x in zip(*items)))
    calls = {"step": 0, "evaluate": 0}

    def step(model, batch):
        calls["step"] += 1
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {}

    def evaluate(model, loader):
        calls["evaluate"] += 1
        return {"loss": 0.0}

    cfg = config(max_steps=7, epochs=1, warmup_ratio=0.0)
    fit(model, loader, loader, cfg, make_accelerator("fp32", "x"), tmp_path / "live", desc="test", step=step,
        evaluate=evaluate)
    assert calls == {"step": 7, "evaluate": 4}
    logged = (tmp_path / "live" / "plots" / "metrics" / "train" / "lr.tsv").read_text().splitlines()[1:]
    assert [round(float(line.split("\t")[-1]), 6) for line in logged] == [round(LR * (7 - k) / 7, 6) for k in range(1, 8)]
