"""The shared training loop: learning-rate schedules at known steps, and max_steps overriding epochs."""

import math
from types import SimpleNamespace

import pytest
import torch

from alignkit.loop import fit
from alignkit.training import make_accelerator, make_optimizer, seeded_loader

LR = 0.1


def config(**overrides):
    return SimpleNamespace(
        **{
            "lr": LR,
            "weight_decay": 0.0,
            "warmup_ratio": 0.1,
            "lr_scheduler": "linear",
            "optimizer": "adamw",
            "max_steps": None,
            "epochs": 1,
            "max_grad_norm": 1.0,
            "keep": "last",
            **overrides,
        }
    )


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


@pytest.mark.parametrize(
    "schedule, at_55, at_99",
    [
        # 10 warmup steps, then 90 to decay over. Step 55 is 45 of 90 into the decay: linear 0.1 x 45/90 = 0.05;
        # cosine 0.1 x 0.5 (1 + cos(pi x 45/90)) = 0.05 as well; at step 99 (89 of 90): linear 0.1 x 1/90 = 0.001111,
        # cosine 0.1 x 0.5 (1 + cos(pi x 89/90)) = 0.1 x 0.5 x (1 - 0.9993908) = 0.00003046; constant stays 0.1.
        ("linear", 0.05, 0.0011111),
        ("cosine", 0.05, 0.00003046),
        ("constant_with_warmup", 0.1, 0.1),
    ],
)
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
    fit(
        model,
        loader,
        loader,
        cfg,
        make_accelerator("fp32", "x"),
        tmp_path / "live",
        desc="test",
        step=step,
        evaluate=evaluate,
    )
    assert calls == {"step": 7, "evaluate": 4}
    logged = (tmp_path / "live" / "plots" / "metrics" / "train" / "lr.tsv").read_text().splitlines()[1:]
    assert [round(float(line.split("\t")[-1]), 6) for line in logged] == [
        round(LR * (7 - k) / 7, 6) for k in range(1, 8)
    ]


def tiny_run(tmp_path, cfg, val_losses, checkpoint=None, stop_after=None, accelerator=None):
    """fit on a linear model, 12 examples in batches of 4 (3 steps an epoch); evaluate returns val_losses in turn
    and records the weights it saw. stop_after: raise after that many training steps (a crash)."""
    from alignkit.loop import fit

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    data = [(torch.randn(2), torch.randn(1)) for _ in range(12)]
    loader = seeded_loader(data, 4, 0, lambda items: tuple(torch.stack(x) for x in zip(*items)))
    seen, steps = [], []

    def step(model, batch):
        steps.append(1)
        if stop_after is not None and len(steps) > stop_after:
            raise KeyboardInterrupt
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {}

    def evaluate(model, loader):
        seen.append(model.weight.detach().clone())
        return {"loss": val_losses[len(seen) - 1]}

    before, after, model = fit(
        model,
        loader,
        loader,
        cfg,
        accelerator or make_accelerator("fp32", "x"),
        tmp_path / "live",
        desc="test",
        step=step,
        evaluate=evaluate,
        checkpoint=checkpoint,
    )
    return after, model, seen


def test_keep_best_writes_the_epoch_with_the_lowest_validation_loss(tmp_path):
    """Validation losses before training, then after epochs 1, 2, 3: 1.0, 0.5, 0.3, 0.4. keep best writes the
    weights evaluated after epoch 2 (the 3rd evaluation) and reports its metrics; keep last, epoch 3's."""
    after, model, seen = tiny_run(tmp_path / "best", config(epochs=3, keep="best"), [1.0, 0.5, 0.3, 0.4])
    assert after["kept_epoch"] == 2 and after["loss"] == 0.3
    assert torch.equal(model.weight, seen[2]) and not torch.equal(model.weight, seen[3])
    after, model, seen = tiny_run(tmp_path / "last", config(epochs=3, keep="last"), [1.0, 0.5, 0.3, 0.4])
    assert after["kept_epoch"] == 3 and after["loss"] == 0.4 and torch.equal(model.weight, seen[3])


def test_keep_best_survives_a_resume_from_a_checkpoint(tmp_path):
    """Validation losses 1.0, 0.2, 0.3, 0.4: epoch 1 is the best. A run stopped in epoch 3 (after 7 steps; the
    checkpoint of step 6 holds epoch 1 as the best so far) and resumed sees only 0.3 and 0.4 after that, yet keeps
    epoch 1's weights, as the uninterrupted run does: the best epoch travels in the checkpoint."""
    from alignkit.checkpoint import Checkpointer

    cfg, losses = config(epochs=3, keep="best"), [1.0, 0.2, 0.3, 0.4]
    _, whole, _ = tiny_run(tmp_path / "whole", cfg, losses)
    accelerator = make_accelerator("fp32", "x")
    ckpt = Checkpointer(tmp_path / "ckpt", 3, "fp", accelerator)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "run", cfg, losses, checkpoint=ckpt, stop_after=7)
    after, resumed, _ = tiny_run(
        tmp_path / "run", cfg, [0.3, 0.4], checkpoint=Checkpointer(tmp_path / "ckpt", 3, "fp", accelerator)
    )
    assert after["kept_epoch"] == 1 and after["loss"] == 0.2 and torch.equal(resumed.weight, whole.weight)


def scaling_accelerator():
    """An Accelerator with a loss scaler, as fp16 on CUDA gets one (accelerate refuses fp16 on a CPU): torch's
    GradScaler for the CPU, doubling its scale after every step without an overflow."""
    accelerator = make_accelerator("fp32", "x")
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    return accelerator


def test_the_loss_scale_survives_a_resume(tmp_path):
    """fp16 training scales its loss, and the scale grows through the run. A run stopped after step 4 and resumed
    from that step's checkpoint goes on at the scale it had (2^14), not at the initial one: the uninterrupted run and
    the resumed one end at the same scale, 2^16, with the same weights. Restarting at the initial scale, as before,
    an fp16 run meets the overflows again and skips the steps it skipped at its start."""
    from alignkit.checkpoint import Checkpointer

    cfg, losses = config(epochs=2), [1.0, 0.5, 0.3]
    whole_accelerator = scaling_accelerator()
    _, whole, _ = tiny_run(tmp_path / "whole", cfg, losses, accelerator=whole_accelerator)
    assert whole_accelerator.scaler.get_scale() == 2.0**16  # 6 steps, each doubling it
    stopped = scaling_accelerator()
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "run", cfg, losses, Checkpointer(tmp_path / "ckpt", 2, "fp", stopped), 5, stopped)
    resumed_accelerator = scaling_accelerator()
    ckpt = Checkpointer(tmp_path / "ckpt", 2, "fp", resumed_accelerator)
    _, resumed, _ = tiny_run(tmp_path / "run", cfg, losses[2:], ckpt, accelerator=resumed_accelerator)
    assert resumed_accelerator.scaler.get_scale() == 2.0**16
    assert torch.equal(resumed.weight, whole.weight)


def curves(live):
    """Every dvclive curve under `live`: {metric path: its TSV rows (step, value) split}."""
    return {
        str(p.relative_to(live / "plots" / "metrics")): [row.split("\t") for row in p.read_text().splitlines()]
        for p in sorted((live / "plots" / "metrics").rglob("*.tsv"))
    }


@pytest.mark.parametrize("stop_after, evaluated", [(1, 1), (2, 1), (4, 2)])
def test_a_resume_from_any_checkpoint_step_gives_the_uninterrupted_curves(tmp_path, stop_after, evaluated):
    """checkpoint_every 1; a crash after step `stop_after`'s checkpoint, then a resume: every train/ and val/ curve
    has the rows of the uninterrupted run, step for step. (At step 1 dvclive alone would take the saved step 0
    for "nothing logged yet" and log step 0 twice.) `evaluated`: validations done before the crash."""
    from alignkit.checkpoint import Checkpointer

    cfg, losses = config(epochs=2), [1.0, 0.5, 0.3]
    tiny_run(tmp_path / "whole", cfg, losses)
    accelerator = make_accelerator("fp32", "x")
    with pytest.raises(KeyboardInterrupt):
        tiny_run(
            tmp_path / "run",
            cfg,
            losses,
            checkpoint=Checkpointer(tmp_path / "ckpt", 1, "fp", accelerator),
            stop_after=stop_after,
        )
    tiny_run(
        tmp_path / "run", cfg, losses[evaluated:], checkpoint=Checkpointer(tmp_path / "ckpt", 1, "fp", accelerator)
    )
    whole, resumed = curves(tmp_path / "whole" / "live"), curves(tmp_path / "run" / "live")
    assert len(whole["train/loss.tsv"]) == 1 + 6 and [r[0] for r in whole["val/loss.tsv"]] == ["step", "0", "3", "6"]
    assert resumed == whole


def test_a_batch_larger_than_the_training_split_is_one_line_naming_the_key(tmp_path):
    from alignkit.errors import ParamsError
    from alignkit.loop import fit

    data = [(torch.randn(2), torch.randn(1)) for _ in range(12)]
    loader = seeded_loader(data, 13, 0, lambda items: tuple(torch.stack(x) for x in zip(*items)))
    with pytest.raises(
        ParamsError,
        match=r"^dpo\.batch_size: 13 is more than the 12 examples of the training "
        r"split; at most 12$",
    ):
        fit(
            torch.nn.Linear(2, 1),
            loader,
            loader,
            config(epochs=1),
            make_accelerator("fp32", "x"),
            tmp_path / "live",
            desc="dpo",
            step=None,
            evaluate=None,
        )
    assert not (tmp_path / "live").exists()


def test_long_loops_before_training_stop_once_dvc_is_gone(monkeypatch):
    """training.progress checks the lifeline at every item: a stage whose dvc is gone stops in its validation,
    reference log-prob or scoring loops too, not only at a training step."""
    from alignkit import lifeline
    from alignkit.errors import Orphaned
    from alignkit.training import progress

    seen = []
    monkeypatch.setattr(lifeline, "_watched", (2**22 + 1, 0, "the dvc process that started it (pid 4194305)"))
    with pytest.raises(Orphaned, match="the dvc process that started it .* is gone"):
        for item in progress(range(5), "reference log-probs"):
            seen.append(item)
    assert seen == []
    monkeypatch.setattr(lifeline, "_watched", None)  # nothing watched (run by hand): every item
    assert list(progress(range(5), "reference log-probs")) == [0, 1, 2, 3, 4]
