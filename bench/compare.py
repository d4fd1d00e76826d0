"""Each benchmark section, run in a worker process of its own (so each gets a fresh
accelerate state in one precision, and its own peak memory).

A worker reads the benchmark's own pipeline run in `work` (params.yaml,
data/prepared, models/) and returns a dict. Ours is always the library function
the stage runs; the peer comes from peers.py. Both sides get the same model
weights, the same batches in the same order, `warmup` untimed steps, then the
median of `repeats` timed ones; training steps of the two sides alternate.
"""

import copy
import math
import statistics
import tempfile
from contextlib import nullcontext
from pathlib import Path

import peers
import torch
from harness import device, peak_memory_mib, sync, timed, timed_interleaved

from alignkit.batching import batches
from alignkit.data import read_splits
from alignkit.loop import train_step
from alignkit.params import load_params
from alignkit.training import make_accelerator, make_optimizer, seeded_loader

AGREE_TOL = 1e-4  # |loss ours - loss theirs| on the same batch, float32, dropout off


def _to(batch, dev):
    return {k: v.to(dev) for k, v in batch.items()}


def _agreement(ours, theirs):
    diff = abs(ours - theirs)
    if diff > AGREE_TOL:
        raise AssertionError(f"ours and the peer disagree on the same batch: {ours:.6f} vs {theirs:.6f}")
    return {"ours_loss": ours, "theirs_loss": theirs, "abs_diff": diff}


def _ours_trainer(model, cfg, precision, key, steps):
    accelerator = make_accelerator(precision, key)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    return (
        model,
        lambda step, batch: train_step(
            model, _to(batch, accelerator.device), step, optimizer, scheduler, accelerator, cfg.max_grad_norm
        ),
        accelerator,
    )


# ---------------------------------------------------------------- reward model


def epoch_batches(lengths, batch_size, seed, grouped):
    """The batches (index lists) of a stage's first epoch, from the stage's own seeded_loader: length-grouped,
    or random as before."""
    loader = seeded_loader(range(len(lengths)), batch_size, seed, list, lengths=lengths if grouped else None)
    return list(loader)


def stage_batches(lengths, batch_size, seed, grouped, n):
    """The first n full batches of the stage's first epoch (epoch_batches)."""
    full = [b for b in epoch_batches(lengths, batch_size, seed, grouped) if len(b) == batch_size]
    if len(full) < n:
        raise SystemExit(f"error: the benchmark needs {n} batches of {batch_size}; the data has {len(full)}")
    return full[:n]


def epoch_padding(lengths, batch_size, seed, collate):
    """Share of the computed positions that are padding over one epoch of the training split, with random
    batches (what the stage did before) and with length-grouped ones; collate(indices) -> (real, computed)."""
    out = {}
    for name, grouped in (("random", False), ("grouped", True)):
        batches = epoch_batches(lengths, batch_size, seed, grouped)
        real, computed = map(sum, zip(*(collate(b) for b in batches)))
        out[name] = 1 - real / computed
    return out


def reward(work, precision, warmup, repeats, with_peer=True, **_):
    from alignkit.reward import PairCollator, PairDataset, batch_loss, load_reward_model

    params = load_params(work / "params.yaml")
    cfg = params.reward
    (train,) = read_splits(work / "data" / "prepared" / "helpful", "train")
    reward_dir = work / "models" / "reward" / "helpful"
    model, tokenizer, _ = load_reward_model(reward_dir / "reward_model.pth", reward_dir)
    n, bs = warmup + repeats, cfg.batch_size
    data = PairDataset(tokenizer, train, cfg.max_length)
    lengths = data.lengths()
    index = stage_batches(lengths, bs, params.seed, cfg.group_by_length, n)
    collate = PairCollator(tokenizer)
    ours_batches = [collate([data[i] for i in b]) for b in index]
    sizes = lambda b: [len(f["input_ids"]) for i in b for f in data[i]]  # noqa: E731
    peer_computed = lambda b: sum(len(b) * max(len(data[i][side]["input_ids"]) for i in b) for side in (0, 1))  # noqa: E731
    out = {
        "batch_size": bs,
        "precision": precision,
        "cls_only_last_layer": model.cls_only,
        "padding": {
            **epoch_padding(lengths, bs, params.seed, lambda b: (sum(sizes(b)), len(sizes(b)) * max(sizes(b)))),
            "ours_timed": 1 - sum(sum(sizes(b)) for b in index) / sum(len(sizes(b)) * max(sizes(b)) for b in index),
            "peer_timed": 1 - sum(sum(sizes(b)) for b in index) / sum(peer_computed(b) for b in index),
        },
    }

    if with_peer:
        # The peer's encoder as transformers builds it: every layer computes every position.
        theirs = peers.reward_trainer(peers.full_reward_model(model), tokenizer, bs, cfg, precision, tempfile.mkdtemp())
        theirs_batches = [peers.reward_batch(theirs, [data[i] for i in b]) for b in index]
        with torch.no_grad():  # the same loss on the same batch, dropout off
            ours_loss = batch_loss(model.eval(), ours_batches[0])[0].item()
            theirs_loss = theirs.compute_loss(theirs.model.eval(), theirs_batches[0]).item()
        out["agreement"] = _agreement(ours_loss, theirs_loss)

    model, step, _ = _ours_trainer(model, cfg, precision, "reward.precision", n)
    sides = {"ours": (lambda b: step(batch_loss, b), ours_batches)}
    if with_peer:
        sides["theirs"] = (peers.TrainerStepper(theirs, n), theirs_batches)
    out.update(_steps(timed_interleaved(sides, warmup)))
    return out


def _steps(seconds):
    """{name}_step_s (median seconds per step) per side, and ratio_{name}: the median over steps of
    theirs / ours on the same batch (ours faster: above 1)."""
    out = {f"{name}_step_s": statistics.median(s) for name, s in seconds.items()}
    for name, s in seconds.items():
        if name != "ours":
            out[f"ratio_{name}"] = statistics.median(t / o for t, o in zip(s, seconds["ours"]))
    return out


# ---------------------------------------------------------------- DPO


def dpo(work, precision, warmup, repeats, with_peer=True, **_):
    from alignkit import dpo as ours
    from alignkit.modeldir import load_policy
    from alignkit.policy import disable_dropout, prepare_tokenizer

    params = load_params(work / "params.yaml")
    cfg = params.dpo
    (train,) = read_splits(work / "data" / "prepared" / "helpful", "train")
    dev = device()
    # Policy: the dpo stage's result; reference: the SFT model it started from (so the loss is not log 2).
    policy, tokenizer = load_policy(str(work / "models" / "dpo"))
    reference, _ = load_policy(str(work / "models" / "sft"))
    prepare_tokenizer(tokenizer)
    disable_dropout(policy)
    disable_dropout(reference.eval()).requires_grad_(False)
    n, bs = warmup + repeats, cfg.batch_size
    encoded_all, _ = ours.encode_pairs(tokenizer, train, cfg.max_length, cfg.max_prompt_length)
    lengths = ours.pair_lengths(encoded_all)
    index = stage_batches(lengths, bs, params.seed, cfg.group_by_length, n)
    used = [i for b in index for i in b]
    encoded = [encoded_all[i] for i in used]  # the timed batches' pairs, in their order
    accelerator = make_accelerator(precision, "dpo.precision")
    reference.to(dev)
    ref_chosen, ref_rejected = ours.reference_logps(
        reference, encoded, tokenizer.pad_token_id, cfg.eval_batch_size, accelerator
    )
    items = [(c, r, (rc.item(), rr.item())) for (c, r), rc, rr in zip(encoded, ref_chosen, ref_rejected)]
    collate = ours.PairCollator(tokenizer.pad_token_id)
    ours_batches = [collate(items[k * bs : (k + 1) * bs]) for k in range(n)]
    step_fn = ours.make_step(ours.PairObjective(cfg))
    sizes = lambda b: [len(encoded_all[i][side][0]) for i in b for side in (0, 1)]  # noqa: E731
    answers = sum(len(ids) - p for c, r in encoded for ids, p in (c, r))  # positions the LM head runs on
    out = {
        "batch_size": bs,
        "precision": precision,
        "padding": {
            **epoch_padding(lengths, bs, params.seed, lambda b: (sum(sizes(b)), len(sizes(b)) * max(sizes(b)))),
            "timed": 1 - sum(sum(sizes(b)) for b in index) / sum(len(sizes(b)) * max(sizes(b)) for b in index),
        },
        "lm_head_positions_share": answers / sum(len(sizes(b)) * max(sizes(b)) for b in index),
    }

    peer_runs = {}
    if with_peer:
        # The peer's models as a trl user loads them (transformers' from_pretrained, its own GELU module).
        peer_reference = peers.plain_policy(work / "models" / "sft").eval().requires_grad_(False).to(dev)
        for name, precompute in (("default", False), ("precompute", True)):
            trainer = peers.dpo_trainer(
                peers.plain_policy(work / "models" / "dpo").to(dev),
                peer_reference,
                tokenizer,
                bs,
                cfg,
                precision,
                tempfile.mkdtemp(),
                precompute,
            )
            batches = [peers.dpo_batch(encoded[k * bs : (k + 1) * bs], tokenizer.pad_token_id, dev) for k in range(n)]
            if precompute:  # trl's own precomputation, before training, outside the timed steps
                for b in batches:
                    b["reference_chosen_logps"], b["reference_rejected_logps"] = trainer.compute_reference_log_probs(b)
            peer_runs[name] = (trainer, batches)
        with torch.no_grad():
            ours_loss = step_fn(policy.to(dev).eval(), _to(ours_batches[0], dev))[0].item()
            for name, (trainer, batches) in peer_runs.items():
                theirs_loss = trainer.get_batch_loss_metrics(trainer.model.eval(), batches[0])[0].item()
                out[f"agreement_{name}"] = _agreement(ours_loss, theirs_loss)

    model, step, _ = _ours_trainer(policy, cfg, precision, "dpo.precision", n)
    sides = {"ours": (lambda b: step(step_fn, b), ours_batches)}
    for name, (trainer, batches) in peer_runs.items():
        sides[f"theirs_{name}"] = (peers.TrainerStepper(trainer, n), batches)
    out.update(_steps(timed_interleaved(sides, warmup)))
    return out


# ---------------------------------------------------------------- PPO


def ppo(work, precision, warmup, repeats, **_):
    import time

    from transformers import AutoTokenizer

    from alignkit import ppo as ours
    from alignkit.ensemble import RewardModels
    from alignkit.modeldir import load_policy
    from alignkit.params import CombineParams
    from alignkit.policy import prepare_tokenizer
    from alignkit.reward import load_reward_model

    params = load_params(work / "params.yaml")
    cfg = params.ppo.model_copy(update={"precision": precision})
    (train,) = read_splits(work / "data" / "prepared" / "helpful", "train")
    sft, reward_dir = work / "models" / "sft", work / "models" / "reward" / "helpful"
    weights = reward_dir / "reward_model.pth"
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(sft, local_files_only=True))
    n = warmup + repeats
    plan = list(enumerate(batches(train, cfg.batch_size, params.seed)[:n]))

    def trainer(load):
        return ours.make_trainer(
            cfg, params.seed, ours.value_head_model(load()), ours.value_head_model(load(), frozen=True), tokenizer, n
        )

    ours_model = lambda: load_policy(str(sft))[0]  # noqa: E731
    notebook_model = lambda: peers.plain_policy(sft, dropout=True)  # noqa: E731  as the notebook loaded it

    reward_device = "cpu" if cfg.reward_device == "cpu" else device()
    # The helpfulness model alone, its raw score as the reward: what the notebook computed.
    one = CombineParams(
        combine="weighted_sum",
        weights={"helpful": 1.0},
        helpfulness=None,
        safety=None,
        safety_threshold=0.15,
        whiten=False,
    )
    scorer = RewardModels(reward_dir.parent, ["helpful"], one, cfg.reward_batch_size, reward_device)
    reward_model, reward_tokenizer, settings = load_reward_model(weights, reward_dir)
    max_length = settings["max_length"]

    # Agreement: the batched scorer and one-at-a-time scoring give the same rewards.
    pairs = [p for _, batch in plan[:1] for p in batch]
    questions, answers = [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batched, _ = scorer.score(questions, answers, [False] * len(answers))
    alone = peers.score_one_at_a_time(reward_model, reward_tokenizer, questions, answers, max_length)
    diff = (batched - alone).abs().max().item()
    if diff > AGREE_TOL:
        raise AssertionError(f"batched and one-at-a-time reward scores differ by {diff}")
    out = {"batch_size": cfg.batch_size, "precision": precision, "agreement": {"max_abs_score_diff": diff}}

    used = [p for _, batch in plan for p in batch]
    start = time.perf_counter()
    baseline = ours.reward_baselines(scorer, used, cfg)  # scored once per run in the stage: its share is added
    baseline_s = (time.perf_counter() - start) / n

    t = trainer(ours_model)

    def ours_iteration(item):
        i, batch = item
        torch.manual_seed(params.seed + i)
        return ours.ppo_iteration(t, scorer, tokenizer, batch, baseline, cfg)

    out["ours_step_s"], results = timed(ours_iteration, plan, warmup)
    out["ours_step_s"] += baseline_s
    out["ours_response_tokens"] = sum(len(r) for res in results for r in res[1]) / (n * cfg.batch_size)
    del t

    t = trainer(notebook_model)

    def notebook_iteration(item):
        i, batch = item
        torch.manual_seed(params.seed + i)
        queries = [
            q.to(t.accelerator.device)
            for q in ours.query_tensors(tokenizer, [p.prompt for p in batch], ours.max_prompt(cfg, t))
        ]
        return peers.notebook_ppo_iteration(
            t, reward_model, reward_tokenizer, max_length, tokenizer, batch, cfg, queries
        )

    out["theirs_step_s"], _ = timed(notebook_iteration, plan, warmup)
    return out


# ---------------------------------------------------------------- evaluation generation


def generation(work, precision, warmup, repeats, prompts=64, **_):
    from alignkit.evaluation import generate
    from alignkit.modeldir import load_policy
    from alignkit.policy import max_prompt_tokens, prepare_tokenizer

    params = load_params(work / "params.yaml")
    (test,) = read_splits(work / "data" / "prepared" / "helpful", "test")
    questions = [p.prompt for p in test[:prompts]]
    model, tokenizer = load_policy(str(work / "models" / "sft"))
    plain = peers.plain_policy(work / "models" / "sft").eval().to(device())  # as a user's loop loads it
    prepare_tokenizer(tokenizer)
    model.to(device())
    gen = params.eval.generation(params.ppo)
    max_prompt = max_prompt_tokens(model.config, gen["max_new_tokens"], params.eval.max_prompt_length)
    bs = params.eval.batch_size

    # Agreement: greedy answers, batched with left padding vs one prompt at a time.
    greedy = {**gen, "do_sample": False}
    batched, _ = generate(model, tokenizer, questions, greedy, bs, params.seed, "greedy", params.eval.max_prompt_length)
    alone = peers.generate_one_at_a_time(plain, tokenizer, questions, greedy, max_prompt)
    same = sum(a == b for a, b in zip(batched, alone)) / len(questions)
    if same < 0.9:
        raise AssertionError(f"batched greedy answers match one-at-a-time answers on only {same:.0%} of prompts")

    runs = range(warmup + repeats)
    ours_s, _ = timed(
        lambda i: generate(
            model, tokenizer, questions, gen, bs, params.seed + i, "generate", params.eval.max_prompt_length
        ),
        runs,
        warmup,
    )
    theirs_s, _ = timed(
        lambda i: peers.generate_one_at_a_time(plain, tokenizer, questions, gen, max_prompt), runs, warmup
    )
    return {
        "prompts": len(questions),
        "batch_size": bs,
        "agreement": {"greedy_identical_share": same},
        "ours_s": ours_s,
        "theirs_s": theirs_s,
    }


# ---------------------------------------------------------------- hardware efficiency


def matmul_peak(precision, size, warmup, repeats):
    """FLOP/s of a size x size x size matmul in the dtype the model's matmuls run in."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(size, size, device=device()).to(dtype)
    b = torch.randn(size, size, device=device()).to(dtype)
    seconds, _ = timed(lambda _: a @ b, range(warmup + repeats), warmup)
    return 2 * size**3 / seconds


def dpo_step_flops(config, n_params, batch_rows, seq_len):
    """Model FLOPs of one training step (forward + backward), as nanoGPT's estimate_mfu counts them:
    6 per parameter per token (position embeddings excluded) + 12 * layers * width * seq_len per
    token for attention. Recomputation under gradient checkpointing is not counted (it is not model work)."""
    n = n_params - config.n_positions * config.n_embd
    per_token = 6 * n + 12 * config.n_layer * config.n_embd * seq_len
    return per_token * batch_rows * seq_len


def _scale_step(
    work, precision, model, pairs, seq_len, checkpointing, lora, steps, objective="sigmoid", quantization="none"
):
    """Our training step of the dpo stage on a GPT-2 of the given architecture, weights from its config (so the
    compute equals the real model's), on full-length sequences (a quarter prompt, the rest answer): (step() -> loss,
    config, parameter count, the policy, its Accelerator). quantization: nf4 puts the LoRA adapter's base in 4 bits.
    objective: a dpo.loss_type; "sigmoid" with the reference's log-probs in the
    batch (precomputed, no reference model held), "sigmoid-live" with a frozen reference model held in memory and
    run at every step (precompute_ref_log_probs: false), or a reference-free one (simpo, cpo, orpo)."""
    from contextlib import nullcontext

    from transformers import GPT2Config, GPT2LMHeadModel

    from alignkit import dpo as ours
    from alignkit.policy import collate, disable_dropout, forward_logps

    loss_type = objective.removesuffix("-live")
    cfg = load_params(work / "params.yaml").dpo.model_copy(
        update={"gradient_checkpointing": checkpointing, "loss_type": loss_type}
    )
    config = GPT2Config(**model)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in policy.parameters())
    if lora:
        from alignkit.adapters import prepare

        lora_cfg = cfg.lora.model_copy(update={"enabled": True, **lora})
        cfg = cfg.model_copy(update={"lora": lora_cfg, "quantization": quantization, "precision": precision})
        policy = prepare(policy, cfg, "dpo", device())
    policy = disable_dropout(policy)
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    rows = [
        (torch.randint(config.vocab_size, (seq_len,), generator=g).tolist(), seq_len // 4) for _ in range(2 * pairs)
    ]
    batch = collate(rows, 0)
    policy.to(device())
    objective_fn = ours.PairObjective(cfg)
    reference = None
    if objective.endswith("-live"):  # a second model, frozen, in memory for the whole run
        frozen = disable_dropout(GPT2LMHeadModel(config)).requires_grad_(False).eval().to(device())
        reference = lambda: nullcontext(frozen)  # noqa: E731
    elif objective_fn.needs_reference:
        with torch.no_grad():
            batch["reference_logps"] = forward_logps(policy, _to(batch, device())).cpu() - 1.0
    _, step, accelerator = _ours_trainer(policy, cfg, precision, "dpo.precision", steps)
    step_fn = ours.make_step(objective_fn, reference)
    # Nothing of a step is kept: holding each step's loss would keep its autograd graph, and with it memory
    # that a training loop frees (with LoRA, about 2 GB a step at this size).
    return lambda: step(step_fn, batch)[0].item(), config, n_params, policy, accelerator


def dpo_step_at_scale(
    work,
    precision,
    warmup,
    repeats,
    model,
    pairs,
    seq_len,
    checkpointing=False,
    matmul_size=4096,
    lora=None,
    objective="sigmoid",
    quantization="none",
    **_,
):
    """One training step of ours at scale (_scale_step): step time, FLOP/s, MFU, peak memory, whether every loss
    was finite, and in fp16 the loss scale accelerate's GradScaler ended at.
    lora: {r, alpha, target_modules} to train a LoRA adapter on the frozen model instead (alignkit.adapters), on a
    4-bit base with quantization nf4. objective: the dpo stage's objective (_scale_step); the FLOPs counted are
    the policy's alone."""
    step, config, n_params, policy, accelerator = _scale_step(
        work, precision, model, pairs, seq_len, checkpointing, lora, warmup + repeats, objective, quantization
    )
    seconds, losses = timed(lambda _: step(), range(warmup + repeats), warmup)
    flops = dpo_step_flops(config, n_params, 2 * pairs, seq_len)
    peak = matmul_peak(precision, matmul_size, 1, 3)
    sync()
    return {
        "precision": precision,
        "checkpointing": checkpointing,
        "lora": lora,
        "quantization": quantization,
        "objective": objective,
        "params": n_params,
        "trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "pairs": pairs,
        "seq_len": seq_len,
        "step_s": seconds,
        "flops_per_step": flops,
        "achieved_flops": flops / seconds,
        "matmul_peak_flops": peak,
        "mfu": flops / seconds / peak,
        "peak_memory_mib": peak_memory_mib(),
        "losses_finite": all(math.isfinite(x) for x in losses),
        "loss_scale": accelerator.scaler.get_scale() if accelerator.scaler is not None else None,
    }


def dpo_step_profile(work, precision, warmup, model, pairs, seq_len, top=15, **_):
    """torch.profiler over one DPO step at scale after `warmup` steps: the ops with the most self time
    (forward and backward together), each with its seconds and share of the step."""
    from torch.profiler import ProfilerActivity, profile

    step, *_ = _scale_step(work, precision, model, pairs, seq_len, False, None, warmup + 1)
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
        sync()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "precision": precision,
        "step_s": total / 1e6,
        "ops": [
            {
                "op": e.key,
                "calls": e.count,
                "self_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / total,
            }
            for e in ops
        ],
    }


# ---------------------------------------------------------------- online RL: RLOO


def rloo(work, precision, warmup, repeats, **_):
    """One RLOO iteration (sample k answers to each of B prompts, score, advantages, one optimizer step): the online
    stage's against trl 0.11.4's RLOOTrainer, on the same SFT policy, prompts and reward models, the same k and the
    same sampling (temperature, top_p 1, top_k 0, max_new_tokens as trl's response_length; trl samples every answer to
    its full length, as it does). First, on one of our rollouts, trl's lines (transcribed in peers.py, checked against
    trl's source as text) give the same advantages and the same loss on a micro-batch as ours."""
    import time

    import datasets
    import trl.trainer.rloo_trainer as trl_rloo
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from alignkit.conversation import Renderer
    from alignkit.ensemble import RewardModels
    from alignkit.losses import aggregate, clipped_objective
    from alignkit.modeldir import load_policy
    from alignkit.online import OnlineTrainer, Rewards
    from alignkit.policy import disable_dropout, max_prompt_tokens, prepare_tokenizer
    from alignkit.training import make_accelerator
    from alignkit.verifiable import Rules

    params = load_params(work / "params.yaml")
    updates = {"precision": precision, "algorithm": "rloo", "num_iterations": 1, "top_p": 1.0, "top_k": 0}
    cfg = params.online.model_copy(update={**updates, "reward": params.online.reward.model_copy(update={"rules": {}})})
    k, prompts_per_step = cfg.num_generations, cfg.prompts_per_step
    cfg = cfg.model_copy(update={"mini_batch_size": k * prompts_per_step})
    sft = work / "models" / "sft"
    (train,) = read_splits(work / "data" / "prepared" / "helpful", "train")
    n = warmup + repeats
    plan = batches(train, prompts_per_step, params.seed)[:n]
    scorer = RewardModels(work / "models" / "reward", params.reward_models, params.ppo.reward, cfg.reward_batch_size)
    rewards = Rewards(scorer, Rules({}), cfg.reward)

    def policy():
        model, tokenizer = load_policy(str(sft))
        return disable_dropout(model), prepare_tokenizer(tokenizer)

    # ours: the online stage's trainer, one rollout and one optimizer step per iteration
    accelerator = make_accelerator(precision, "online.precision")
    model, tokenizer = policy()
    reference = disable_dropout(load_policy(str(sft))[0]).requires_grad_(False).eval()
    optimizer, scheduler = make_optimizer(model, cfg, n, "online")
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ours = OnlineTrainer(
        model, optimizer, scheduler, lambda: nullcontext(reference), tokenizer, rewards, cfg, params.seed, accelerator
    )

    # agreement, on our first rollout: trl's advantage lines, and trl's loss lines on a micro-batch of k answers
    roll = ours.rollout(plan[0], 0)
    logprobs = torch.cat([o for o in roll["old"]])
    ref_logprobs = torch.cat([r for r in roll["ref"]])
    # trl's layout: answer j of prompt p at row j * B + p; ours p * k + j
    order = [p * k + j for j in range(k) for p in range(prompts_per_step)]
    if not peers.trl_rloo_source_matches():
        raise AssertionError("trl's RLOOTrainer.train no longer holds the lines bench/peers.py transcribes")
    theirs = peers.trl_rloo_advantages(logprobs[order], ref_logprobs[order], roll["rewards"][order], cfg.beta, k)
    back = [order.index(i) for i in range(len(order))]
    theirs = theirs[back]  # back in our order
    advantages_diff = (theirs - roll["advantages"].cpu()).abs().max().item()
    mask = roll["batches"][0]["loss_mask"][:, 1:]
    rows = [p * k for p in range(prompts_per_step)]  # a micro-batch: each prompt's first answer; ratio 1
    token_mb = logprobs[rows]
    padded = token_mb.masked_fill(~mask[rows], trl_rloo.INVALID_LOGPROB)
    theirs_loss = peers.trl_rloo_pg_loss(padded, padded, theirs[rows], cfg.epsilon).item()
    losses, _ = clipped_objective(token_mb, token_mb, roll["advantages"].cpu()[rows], cfg.epsilon, cfg.epsilon_high)
    our_loss = aggregate(losses, mask[rows], "grpo", cfg.max_new_tokens).item()
    agreement = {
        "advantages_max_abs_diff": advantages_diff,
        "ours_loss": our_loss,
        "theirs_loss": theirs_loss,
        "abs_diff": abs(our_loss - theirs_loss),
    }
    if advantages_diff > AGREE_TOL or agreement["abs_diff"] > AGREE_TOL:
        raise AssertionError(f"RLOO: ours and trl's RLOOTrainer disagree: {agreement}")

    def ours_iteration(item):
        step, batch = item
        return ours.optimise(ours.rollout(batch, step))

    ours_s, _ = timed(ours_iteration, list(enumerate(plan)), warmup)

    # theirs: RLOOTrainer.train over the same prompts (rendered and fitted as ours), timed per update by a callback
    renderer = Renderer(tokenizer)
    budget = max_prompt_tokens(accelerator.unwrap_model(model).config, cfg.max_new_tokens, cfg.max_prompt_length)
    prompt_ids = [renderer.fit_prompt(p.prompt, budget)[0] for batch in plan for p in batch]
    by_ids = {tuple(ids): p for ids, p in zip(prompt_ids, (p for batch in plan for p in batch))}

    def get_reward(model, query_responses, pad_token_id, context_length):
        """trl's reward call, scored by our reward models from the decoded text (each prompt found by its ids)."""
        pairs, texts = [], []
        for row in query_responses.tolist():
            query, response = row[:context_length], row[context_length:]
            while query and query[0] == pad_token_id:
                query = query[1:]
            pairs.append(by_ids[tuple(query)])
            end = response.index(pad_token_id) if pad_token_id in response else len(response)
            texts.append(tokenizer.decode(response[:end], skip_special_tokens=True).strip())
        scores, _ = rewards(pairs, texts, [True] * len(texts))
        return None, scores.to(query_responses.device), None

    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out_dir:
        config = RLOOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=k * prompts_per_step,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=1,
            rloo_k=k,
            kl_coef=cfg.beta,
            cliprange=cfg.epsilon,
            temperature=cfg.temperature,
            response_length=cfg.max_new_tokens,
            stop_token="eos",
            total_episodes=n * prompts_per_step * k,
            learning_rate=cfg.lr,
            num_sample_generations=0,
            report_to="none",
            disable_tqdm=True,
            save_strategy="no",
            seed=params.seed,
            local_rollout_forward_batch_size=k * prompts_per_step,
            bf16=precision == "bf16",
        )
        dataset = datasets.Dataset.from_dict({"input_ids": prompt_ids})
        tokenizer.padding_side = "left"
        theirs_policy, ref = policy()[0], disable_dropout(load_policy(str(sft))[0])
        trainer = RLOOTrainer(
            config=config,
            tokenizer=tokenizer,
            policy=theirs_policy,
            ref_policy=ref,
            reward_model=torch.nn.Identity(),
            train_dataset=dataset,
            eval_dataset=dataset,
            callbacks=[Stamp()],
        )
        original, trl_rloo.get_reward = trl_rloo.get_reward, get_reward
        try:
            start = time.perf_counter()
            trainer.train()
        finally:
            trl_rloo.get_reward = original
    steps = [b - a for a, b in zip([start, *stamps], stamps)]
    theirs_s = statistics.median(steps[warmup:])
    return {
        "answers": k * prompts_per_step,
        "prompts": prompts_per_step,
        "k": k,
        "precision": precision,
        "ours_step_s": ours_s,
        "theirs_step_s": theirs_s,
        "theirs_steps": len(steps),
        "agreement": agreement,
    }


# ---------------------------------------------------------------- the CUDA check's own (bench/gpu_check.py)

# What each check must reach. The merged model may differ from its adapter on the 4-bit base by at most this
# multiple of what quantising the base alone moves the same log-probs (merging adds the adapter to the full-
# precision weights, so the two differ by the base's quantisation error, nothing else).
MERGE_NF4_FACTOR = 1.5
# The adapter merged into the full-precision base against the same adapter unmerged on it: rounding only.
MERGE_EXACT_TOL = 1e-3  # nats per sequence


def _logps(model, pairs, tokenizer):
    """Summed log-probs of each pair's preferred answer after its prompt, as evaluate computes them (the pairs
    encoded by alignkit.conversation.Renderer, scored by alignkit.evaluation.summed_logps), in float64."""
    from alignkit.conversation import Renderer
    from alignkit.evaluation import summed_logps

    encoded, _ = Renderer(tokenizer).encode_pairs(pairs, 256, 128)
    chosen = [c for c, _ in encoded]
    return summed_logps(model.eval(), chosen, tokenizer.pad_token_id, len(chosen), "check").double()


def merge_check(work, precision, pairs=16, **_):
    """The merged DPO model (models/merged/dpo: SFT adapter merged, then DPO adapter) against the model it was
    trained as: the DPO adapter on the 4-bit nf4 base of the merged SFT model, in the compute dtype. Also the same
    adapter unmerged on the full-precision base (merging must match it to rounding), and the base alone in 4 bits
    (the quantisation's own effect on the same log-probs, which bounds the first difference)."""
    from peft import PeftModel

    from alignkit.adapters import COMPUTE_DTYPES, quantize_nf4
    from alignkit.data import read_sets
    from alignkit.modeldir import load_policy

    dev = device()
    val = read_sets(work / "data/prepared", ["helpful"], "validation")[0][:pairs]
    merged, tokenizer = load_policy(str(work / "models/merged/dpo"), "merged")
    base, _ = load_policy(str(work / "models/sft"), "sft")  # the SFT adapter merged into its base: dpo's start
    quantized = quantize_nf4(copy.deepcopy(base), COMPUTE_DTYPES[precision], dev, "check")
    as_trained = PeftModel.from_pretrained(quantized, str(work / "models/dpo"))
    unmerged = PeftModel.from_pretrained(copy.deepcopy(base), str(work / "models/dpo"))
    lp = {
        name: _logps(model.to(dev), val, tokenizer)
        for name, model in [("merged", merged), ("as_trained", as_trained), ("unmerged", unmerged), ("base", base)]
    }
    with as_trained.disable_adapter():
        lp["base_nf4"] = _logps(as_trained, val, tokenizer)
    exact = (lp["merged"] - lp["unmerged"]).abs().max().item()
    nf4 = (lp["merged"] - lp["as_trained"]).abs().max().item()
    quantisation = (lp["base"] - lp["base_nf4"]).abs().max().item()
    return {
        "pairs": len(val),
        "compute_dtype": precision,
        "merged_vs_unmerged_max_nats": exact,
        "merged_vs_4bit_adapter_max_nats": nf4,
        "base_vs_4bit_base_max_nats": quantisation,
        "merged_logp_mean": lp["merged"].mean().item(),
        "exact_ok": exact <= MERGE_EXACT_TOL,
        "nf4_ok": nf4 <= MERGE_NF4_FACTOR * quantisation + MERGE_EXACT_TOL,
    }


def quant_paths(work, precision, pairs=16, **_):
    """The 4-bit nf4 model two ways from the same saved weights (models/merged/sft): our quantize_nf4 on the loaded
    model, and transformers' from_pretrained with BitsAndBytesConfig (nf4, double quantisation, the same compute
    dtype). The layers each quantised, whether their packed weights and quantisation constants are identical, and
    the largest difference in summed log-probs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from alignkit.adapters import COMPUTE_DTYPES, quantize_nf4
    from alignkit.data import read_sets

    path, dev, dtype = str(work / "models/merged/sft"), device(), COMPUTE_DTYPES[precision]
    tokenizer = AutoTokenizer.from_pretrained(path)
    val = read_sets(work / "data/prepared", ["helpful"], "validation")[0][:pairs]
    ours = quantize_nf4(AutoModelForCausalLM.from_pretrained(path), dtype, dev, "check")
    ours_lp = _logps(ours, val, tokenizer)
    full = _logps(AutoModelForCausalLM.from_pretrained(path).to(dev), val, tokenizer)
    out = {
        "compute_dtype": precision,
        "ours_layers": sorted(n for n, m in ours.named_modules() if type(m).__name__ == "Linear4bit"),
        "ours_vs_full_max_nats": (ours_lp - full).abs().max().item(),
    }
    if not torch.cuda.is_available():
        return {**out, "skipped": "from_pretrained with a BitsAndBytesConfig needs CUDA (transformers 4.45)"}
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    theirs = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map={"": dev.index or 0})
    layers = {n: m for n, m in theirs.named_modules() if type(m).__name__ == "Linear4bit"}
    same = []
    for name, module in ours.named_modules():
        if name in layers:
            a, b = module.weight, layers[name].weight
            same.append(
                torch.equal(a.data, b.data)
                and torch.equal(a.quant_state.absmax, b.quant_state.absmax)
                and torch.equal(a.quant_state.state2.absmax, b.quant_state.state2.absmax)
            )
    diff = (ours_lp - _logps(theirs, val, tokenizer)).abs().max().item()
    return {
        **out,
        "theirs_layers": sorted(layers),
        "identical_layers": sum(same),
        "ours_vs_theirs_max_nats": diff,
        "ok": sorted(layers) == out["ours_layers"] and all(same) and diff < 1e-3,
    }


SECTIONS = {
    "reward": reward,
    "dpo": dpo,
    "ppo": ppo,
    "generation": generation,
    "dpo_step_at_scale": dpo_step_at_scale,
    "dpo_step_profile": dpo_step_profile,
    "rloo": rloo,
    "merge_check": merge_check,
    "quant_paths": quant_paths,
}


def run_section(name, work, **kwargs):
    return SECTIONS[name](Path(work), **kwargs)
