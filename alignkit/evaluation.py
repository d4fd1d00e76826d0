"""Evaluation of a policy on the test split: generations, text metrics, reward, win rates, KL."""

import statistics

import torch

from alignkit.batching import in_order, sorted_batches
from alignkit.conversation import Renderer, as_text, to_json
from alignkit.policy import collate, forward_logps, max_prompt_tokens
from alignkit.textmetrics import bleu, distinct_n, rouge, win_rate
from alignkit.training import progress


@torch.no_grad()
def generate(model, tokenizer, prompts, gen, batch_size, seed, desc, max_prompt_length):
    """Sampled answers, batched with left padding: ([answer text], [answer ids, end-of-turn included if produced]).

    gen: temperature, top_p, top_k, max_new_tokens (and do_sample=False for greedy). Prompts (Messages) are
    rendered by Renderer and fitted to max_prompt_tokens (oldest turns dropped first). Seeded, so every model
    evaluated with the same seed sees the same sampling noise.
    """
    torch.manual_seed(seed)
    model.eval()
    renderer = Renderer(tokenizer)
    budget = max_prompt_tokens(model.config, gen["max_new_tokens"], max_prompt_length)
    texts, ids = [], []
    for start in progress(range(0, len(prompts), batch_size), desc):
        queries = [renderer.fit_prompt(m, budget)[0] for m in prompts[start : start + batch_size]]
        width = max(map(len, queries))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(q)) + q for q in queries])
        attention_mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in queries])
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=renderer.stop_ids,
            **{"do_sample": True, **gen},
        )
        for row in out[:, width:].tolist():
            stop = next((i for i, t in enumerate(row) if t in renderer.stop_ids), None)
            row = row if stop is None else row[: stop + 1]
            ids.append(row)
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts, ids


@torch.no_grad()
def summed_logps(model, examples, pad_id, batch_size, desc):
    """Summed answer log-probs (N,) of [(ids, prompt_len)] examples, in batches, on the CPU."""
    batches = sorted_batches([len(ids) for ids, _ in examples], batch_size)  # longest first: little padding
    out = []
    for index in progress(batches, desc):
        batch = {k: v.to(model.device) for k, v in collate([examples[i] for i in index], pad_id).items()}
        out.append(forward_logps(model, batch).cpu())
    return in_order(batches, out) if out else torch.zeros(0)


def answer_logps(model, tokenizer, prompts, answer_ids, batch_size, budget, desc):
    """Summed log-probs (N,) of given answer token ids after each prompt, fitted to `budget` tokens as generated."""
    renderer = Renderer(tokenizer)
    prompt_ids = [renderer.fit_prompt(m, budget)[0] for m in prompts]
    examples = [(p + a, len(p)) for p, a in zip(prompt_ids, answer_ids)]
    return summed_logps(model, examples, tokenizer.pad_token_id, batch_size, desc)


def preference_accuracy(model, tokenizer, pairs, max_length, max_prompt_length, batch_size, desc):
    """Share of pairs where the policy gives the chosen answer a higher log-prob than the rejected:
    (by summed log-prob, by mean log-prob per answer token)."""
    renderer = Renderer(tokenizer)
    encoded, _ = renderer.encode_pairs(pairs, max_length, max_prompt_length)  # pairs whose question fits
    sums, means = {}, {}
    for side, examples in zip(("chosen", "rejected"), zip(*encoded)):
        sums[side] = summed_logps(model, examples, tokenizer.pad_token_id, batch_size, f"{desc} ({side})")
        means[side] = sums[side] / torch.tensor([len(ids) - prompt_len for ids, prompt_len in examples])
    return tuple((s["chosen"] > s["rejected"]).float().mean().item() for s in (sums, means))


def evaluate_policy(name, policy, sft, tokenizer, scorer, pairs, cfg, gen, seed):
    """All metrics of one policy on `pairs` (the test split), and its generations for people to read.

    sft is the SFT policy: the baseline of win_rate_vs_sft and the reference of kl_to_reference (when it is
    `policy` itself, its seeded answers and log-probs are those of the policy, computed once). scorer:
    the reward models (ensemble.RewardModels); reward_mean and the top-level win rates are of their
    combined reward (ppo.reward), reward_models.<name> of each model's own score.
    """
    # checked against the model before anything runs
    budget = max_prompt_tokens(
        policy.config, gen["max_new_tokens"], cfg.max_prompt_length, cfg.generation_key("max_new_tokens")
    )
    questions, references = [p.prompt for p in pairs], [p.chosen for p in pairs]
    unsafe = [p.unsafe for p in pairs]
    answers, answer_ids = generate(
        policy, tokenizer, questions, gen, cfg.batch_size, seed, f"generate {name}", cfg.max_prompt_length
    )
    same = sft is policy
    sft_answers = (
        answers
        if same
        else generate(sft, tokenizer, questions, gen, cfg.batch_size, seed, "generate sft", cfg.max_prompt_length)[0]
    )
    rewards, raw = scorer.score(questions, answers, unsafe, f"score {name}")
    logps = answer_logps(policy, tokenizer, questions, answer_ids, cfg.batch_size, budget, f"log-probs {name}")
    kl = logps - (
        logps if same else answer_logps(sft, tokenizer, questions, answer_ids, cfg.batch_size, budget, "log-probs sft")
    )
    accuracy_sum, accuracy_mean = preference_accuracy(
        policy, tokenizer, pairs, cfg.max_length, cfg.max_prompt_length, cfg.batch_size, f"test pairs {name}"
    )

    others = {
        "sft": (sft_answers, *((rewards, raw) if same else scorer.score(questions, sft_answers, unsafe, "score sft"))),
        "reference": (references, *scorer.score(questions, references, unsafe, "score reference")),
    }

    def win_rate_vs(mine, other, theirs):  # the same text on both sides is a tie, whatever padding does to scores
        return win_rate(mine.tolist(), theirs.tolist(), [a == b for a, b in zip(answers, other)])

    per_model = {
        model: {
            "mean": raw[model].mean().item(),
            **{
                f"win_rate_vs_{o}": win_rate_vs(raw[model], texts, theirs[model])
                for o, (texts, _, theirs) in others.items()
            },
        }
        for model in scorer.names
    }
    violation_rate, _ = scorer.violation_rate(raw, unsafe)
    metrics = {
        "bleu": bleu(references, answers),
        **rouge(references, answers),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        **{f"win_rate_vs_{o}": win_rate_vs(rewards, texts, combined) for o, (texts, combined, _) in others.items()},
        "reward_models": per_model,
        **({"safety_violation_rate": violation_rate} if violation_rate is not None else {}),
        "preference_accuracy": accuracy_sum,
        "preference_accuracy_normalized": accuracy_mean,
        "kl_to_reference": kl.mean().item(),
        "mean_length": statistics.fmean(len(a.split()) for a in answers),
        "distinct_1": distinct_n(answers, 1),
        "distinct_2": distinct_n(answers, 2),
    }
    generations = [
        {
            "question": as_text(q),
            "prompt": to_json(q),
            "unsafe": u,
            "reference": r,
            "answer": a,
            "reward": round(s, 4),
            "scores": {m: round(raw[m][i].item(), 4) for m in scorer.names},
        }
        for i, (q, u, r, a, s) in enumerate(zip(questions, unsafe, references, answers, rewards.tolist()))
    ]
    return metrics, generations
