"""The skeleton every training loop runs in (TrainingRun: resume, step, log, checkpoint, stop), and the
supervised loop that the reward, SFT and DPO stages share (fit).

A loop (training.fit for reward, SFT and DPO; ppo.train_ppo; the next method's) owns only its step: what a
batch is and what one optimizer step does. TrainingRun does the rest, the same way for all of them:

    run = TrainingRun("dpo", steps, accelerator, live_dir, checkpoint, keep="last")
    saved = run.resume(model)             # the loop's own state from the last checkpoint, or None
    run.start(before)                     # dvclive curves (val/ from `before` at step 0) and the bar
    for epoch in run.epochs(n):           # from the checkpoint's epoch, its RNG states restored
        for batch in run.batches(loader): # consumed batches skipped; the lifeline checked before each
            ...                           # the loop's step
            run.stepped({"loss": ...})    # non-finite guard, train/ curves, the bar
            run.save_if_due(model, lambda: {...the loop's own state...})
        run.validated(metrics, model)     # val/ curves; with keep="best", the best epoch's weights
    kept = run.finish(model)              # bar and curves closed, checkpoint finished, best weights back

The step count is the loop's plan, worked out once by the caller. A checkpoint holds the loop's state and the
run's position (epoch, batches done, step), the RNG states, accelerate's accumulation counter and the kept
best epoch, so a resumed run continues exactly as the uninterrupted one would have, curves included.
"""

import math

import torch
from tqdm.auto import tqdm

from alignkit import lifeline
from alignkit.checkpoint import load_weights, model_weights, rng_state, set_rng_state
from alignkit.errors import ParamsError, TrainingError
from alignkit.training import make_optimizer


class NullLive:
    """Stands in for dvclive.Live on processes other than the main one."""

    def log_metric(self, *args, **kwargs):
        pass

    def next_step(self):
        pass

    def end(self):
        pass


def open_live(live_dir, accelerator, resume=False):
    """dvclive logger writing step curves under live_dir (main process only).

    It neither edits dvc.yaml nor creates DVC experiments: the pipeline declares
    the plots, and `dvc exp run` makes the experiments. resume=True continues
    the curves already in live_dir (after a checkpoint restored them).
    """
    if not accelerator.is_main_process:
        return NullLive()
    from dvclive import Live

    return Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)


def log_validation(live, metrics):
    """One point per validation pass on each val/<name> curve, at the optimizer step it follows."""
    for name, value in metrics.items():
        live.log_metric(f"val/{name}", value)


class TrainingRun:
    """One training run of `steps` optimizer steps (see the module text).

    checkpoint: a Checkpointer, or None (no resume, no checkpoints). keep: "last" (the weights at the end) or
    "best" (those of the epoch with the lowest validation loss, as validated() saw them).
    """

    def __init__(self, desc, steps, accelerator, live_dir, checkpoint=None, keep="last"):
        self.desc, self.steps, self.accelerator = desc, steps, accelerator
        self.live_dir, self.checkpoint, self.keep = live_dir, checkpoint, keep
        self.saved = None  # the state of the checkpoint this run resumed from
        self.step = 0  # optimizer steps done
        self.epoch, self.batches_done, self.resuming = 0, 0, False
        self.best = None  # with keep="best": {"epoch", "metrics", "weights"} of the best epoch so far

    def resume(self, model):
        """Load the last checkpoint of this run, if there is one: its weights into `model`, its dvclive folder
        back in place. Returns the state the loop saved with it (save_if_due), or None for a fresh start."""
        self.saved = self.checkpoint.load(self.accelerator.unwrap_model(model)) if self.checkpoint else None
        if self.saved:
            self.checkpoint.restore_live(self.live_dir)
            self.step, self.best = self.saved["position"]["global_step"], self.saved["best"]
            self.accelerator.step = self.saved["accumulation_step"]  # where gradient accumulation stood
            if self.accelerator.scaler is not None and "scaler" in self.saved:  # fp16: on at the scale it had reached
                self.accelerator.scaler.load_state_dict(self.saved["scaler"])
            print(f"{self.desc}: resumed from checkpoint at step {self.step}", flush=True)
        return self.saved

    def start(self, before=None):
        """Open the curves and the bar. `before`: validation metrics of the untrained model, the val/ curves'
        point at step 0 (a resumed run has it already)."""
        self.live = open_live(self.live_dir, self.accelerator, resume=self.saved is not None)
        if self.saved:
            # dvclive resumes at the step after the last one logged, except after step 0, which it takes for
            # "nothing logged yet": the step is set here, so a resume from any checkpoint continues the curves.
            self.live.step = self.step
        elif before:
            log_validation(self.live, before)
        # disable=None: a bar on a terminal, none in logs; only the main process draws it.
        self.bar = tqdm(
            total=self.steps,
            initial=self.step,
            desc=self.desc,
            disable=None if self.accelerator.is_main_process else True,
        )

    def epochs(self, count):
        """Epochs 0..count-1 still to run: from the checkpoint's, whose RNG states are restored first."""
        first = self.saved["position"]["epoch"] if self.saved else 0
        for epoch in range(first, count):
            self.epoch, self.resuming = epoch, self.saved is not None and epoch == first
            if self.resuming:
                set_rng_state(self.saved["rng"])
            yield epoch

    def batches(self, loader):
        """This epoch's batches, those a checkpoint had consumed skipped, until the run's last step; before each,
        lifeline.check() stops the stage once the dvc process that started it is gone (the checkpoint stays)."""
        skip = self.saved["position"]["batches_done"] if self.resuming else 0
        for done, batch in enumerate(loader, start=1):
            if done <= skip:
                continue
            if self.step == self.steps:
                break  # max_steps reached part-way through an epoch, or resumed from the last step's checkpoint
            lifeline.check()
            self.batches_done = done
            yield batch

    def stepped(self, metrics, **postfix):
        """One optimizer step is done: `metrics` (floats, the loss first) are checked -- a non-finite one stops the
        run with a TrainingError naming it and the step -- logged on the train/<name> curves, and shown on the bar
        (with `postfix`)."""
        self.step += 1
        bad = next((name for name, value in metrics.items() if not math.isfinite(value)), None)
        if bad is not None:
            last = self.checkpoint.describe() if self.checkpoint else "checkpoints are off"
            raise TrainingError(
                f"{self.desc}: the {bad} is {metrics[bad]} at step {self.step} (epoch {self.epoch}); "
                f"training stopped, the last good checkpoint is kept ({last})"
            )
        for name, value in metrics.items():
            self.live.log_metric(f"train/{name}", value)
        self.live.next_step()
        self.bar.update()
        self.bar.set_postfix(epoch=self.epoch, **postfix)

    def save_if_due(self, model, state):
        """Write a checkpoint if this step is due one: state() (the loop's own: optimizer, scheduler, running
        sums), the run's position, the RNG states, the accumulation counter, fp16's loss scaler and the kept best
        epoch."""
        if self.checkpoint and self.checkpoint.due(self.step):
            self.checkpoint.save(
                self.step,
                self.accelerator.unwrap_model(model),
                {
                    **state(),
                    "rng": rng_state(),
                    "best": self.best,
                    "accumulation_step": self.accelerator.step,
                    **({"scaler": self.accelerator.scaler.state_dict()} if self.accelerator.scaler is not None else {}),
                    "position": {"epoch": self.epoch, "batches_done": self.batches_done, "global_step": self.step},
                },
                self.live_dir,
            )

    def validated(self, metrics, model):
        """Validation after an epoch: a point on each val/ curve, a line under the bar, and with keep="best" the
        weights of this epoch if its validation loss is the lowest so far."""
        log_validation(self.live, metrics)
        self.say(f"epoch {self.epoch}: " + ", ".join(f"val {k} {v:.4f}" for k, v in metrics.items()))
        if self.keep == "best" and (self.best is None or metrics["loss"] < self.best["metrics"]["loss"]):
            self.best = {
                "epoch": self.epoch,
                "metrics": metrics,
                "weights": model_weights(self.accelerator.unwrap_model(model)),
            }

    def say(self, line):
        """A line under the bar (the bar is drawn again below it)."""
        self.bar.write(line)

    def finish(self, model):
        """Close the bar and the curves, and mark the checkpoint finished (the stage marks it complete once its
        outputs are written). With keep="best", the best epoch's weights go back into `model` (unwrapped).
        Returns (the unwrapped model, the kept best epoch's {"epoch", "metrics"} or None)."""
        self.bar.close()
        self.live.end()
        if self.checkpoint:
            self.checkpoint.finished(self.step)
        model = self.accelerator.unwrap_model(model)
        if self.best is None:
            return model, None
        load_weights(model, self.best["weights"])
        self.say(
            f"{self.desc}: kept the weights of epoch {self.best['epoch']} "
            f"(lowest val loss {self.best['metrics']['loss']:.4f})"
        )
        return model, {"epoch": self.best["epoch"], "metrics": self.best["metrics"]}


def train_step(model, batch, step, optimizer, scheduler, accelerator, max_grad_norm):
    """One micro-batch: forward under autocast and backward; at an accumulation boundary
    also clip, step the optimizer and scheduler, and zero the gradients.

    step(model, batch) -> (loss, {name: tensor}). Returns step's result, nothing synced to the host.
    """
    with accelerator.accumulate(model):
        with accelerator.autocast():
            loss, logs = step(model, batch)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return loss, logs


def fit(
    model,
    train_loader,
    val_loader,
    cfg,
    accelerator,
    live_dir,
    *,
    desc,
    step,
    evaluate,
    grad_accum_steps=1,
    checkpoint=None,
    state=None,
):
    """The supervised loop of the reward, SFT and DPO stages, run in alignkit.loop.TrainingRun: AdamW (or
    cfg.optimizer), a warmup-then-decay schedule, clipping, gradient accumulation.

    cfg: a params section with lr, weight_decay, warmup_ratio, lr_scheduler, max_grad_norm, epochs,
    max_steps (optimizer steps; when set it overrides epochs, and the last epoch may stop part-way) and
    keep (last: the weights at the end; best: those of the epoch with the lowest validation loss).
    step(model, batch) -> (loss, {name: tensor}) for one micro-batch, under autocast.
    evaluate(model, val_loader) -> {name: float}, computed on every process, before training and after each
    epoch. checkpoint: a Checkpointer, or None. Returns (metrics before training; after the kept epoch, with
    "kept_epoch" and "train_loss", the mean over the last epoch; the unwrapped model).
    state: an object with state_dict() and load_state_dict() that step() updates (bco_pair's running mean), kept
    in checkpoints and restored on resume; None: none.
    """
    size, examples = train_loader.batch_sampler.batch_size, len(train_loader.dataset)
    if size > examples:  # one batch of everything would be another algorithm (and fewer steps), silently
        raise ParamsError(
            f"{desc}.batch_size: {size} is more than the {examples} examples of the training split; at most {examples}"
        )
    generator = train_loader.generator  # the data order: its state at an epoch's start replays that epoch
    train_loader, val_loader = accelerator.prepare(train_loader, val_loader)
    per_epoch = math.ceil(len(train_loader) / grad_accum_steps)  # optimizer steps per epoch, per process
    steps = cfg.max_steps or cfg.epochs * per_epoch  # the plan: max_steps, when set, overrides epochs
    # accelerate steps a prepared scheduler once per process at every optimizer step.
    optimizer, scheduler = make_optimizer(model, cfg, steps * accelerator.num_processes, desc)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    epochs = math.ceil(steps / per_epoch)
    run = TrainingRun(desc, steps, accelerator, live_dir, checkpoint, cfg.keep)
    saved = run.resume(model)
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if state is not None:
            state.load_state_dict(saved["state"])
    before = saved["before"] if saved else evaluate(model, val_loader)
    run.start(before)
    after, epoch_losses = before, saved["epoch_losses"] if saved else []
    for _ in run.epochs(epochs):
        if run.resuming:
            generator.set_state(saved["epoch_generator"])
        else:
            epoch_losses = []
        epoch_generator = generator.get_state()
        model.train()
        pending = []
        for batch in run.batches(train_loader):
            loss, logs = train_step(model, batch, step, optimizer, scheduler, accelerator, cfg.max_grad_norm)
            pending.append({"loss": loss.detach(), **logs})
            if not accelerator.sync_gradients:
                continue
            means = {
                k: torch.stack([torch.as_tensor(p[k], dtype=torch.float32) for p in pending]).mean() for k in pending[0]
            }
            means = {k: v.item() for k, v in accelerator.reduce(means, "mean").items()}
            pending = []
            run.stepped({**means, "lr": scheduler.get_last_lr()[0]}, **{k: f"{v:.3f}" for k, v in means.items()})
            epoch_losses.append(means["loss"])
            run.save_if_due(  # calls the lambda now or never: it binds this step's values
                model,
                lambda: {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "before": before,
                    "epoch_generator": epoch_generator,  # noqa: B023
                    "epoch_losses": list(epoch_losses),  # noqa: B023
                    **({"state": state.state_dict()} if state is not None else {}),
                },
            )
        after = evaluate(model, val_loader)
        run.validated(after, model)
    model, kept = run.finish(model)
    if kept:  # the best epoch's weights are back in the model: report its validation metrics
        after = {**kept["metrics"], "kept_epoch": kept["epoch"] + 1}
    else:  # the last epoch's weights (counted from 1; 0: none trained)
        after = {**after, "kept_epoch": epochs}
    if epoch_losses:
        after = {**after, "train_loss": sum(epoch_losses) / len(epoch_losses)}
    return before, after, model
