"""Evaluation of a policy on the test split: generations, text metrics, reward, win rates, KL."""

import statistics

import torch
from tqdm.auto import tqdm

from alignkit.policy import collate, encode_examples, forward_logps, max_prompt_tokens
from alignkit.prompts import format_prompt
from alignkit.textmetrics import bleu, distinct_n, rouge, win_rate


@torch.no_grad()
def generate(model, tokenizer, questions, gen, batch_size, seed, desc):
    """Sampled answers, batched with left padding: ([answer text], [answer ids, EOS included if produced]).

    gen: temperature, top_p, top_k, max_new_tokens (and do_sample=False for greedy). Prompts are cut from the left to
    leave room for max_new_tokens in the context window. Seeded, so every model
    evaluated with the same seed sees the same sampling noise.
    """
    torch.manual_seed(seed)
    model.eval()
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    max_prompt = max_prompt_tokens(model.config, gen["max_new_tokens"])
    texts, ids = [], []
    for start in tqdm(range(0, len(questions), batch_size), desc=desc, disable=None):
        enc = tokenizer([format_prompt(q) for q in questions[start: start + batch_size]], return_tensors="pt",
                        padding=True, truncation=True, max_length=max_prompt, add_special_tokens=False)
        out = model.generate(**enc.to(model.device), pad_token_id=tokenizer.eos_token_id,
                             eos_token_id=tokenizer.eos_token_id, **{"do_sample": True, **gen})
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id) + 1]
            ids.append(row)
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts, ids


@torch.no_grad()
def summed_logps(model, examples, pad_id, batch_size):
    """Summed answer log-probs (N,) of [(ids, prompt_len)] examples, in batches, on the CPU."""
    out = []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(examples[start: start + batch_size], pad_id).items()}
        out.append(forward_logps(model, batch))
    return torch.cat(out).cpu()


def answer_logps(model, tokenizer, questions, answer_ids, batch_size):
    """Summed log-probs (N,) of given answer token ids after each question's prompt."""
    prompts = tokenizer([format_prompt(q) for q in questions], add_special_tokens=False)["input_ids"]
    examples = [(p + a, len(p)) for p, a in zip(prompts, answer_ids)]
    return summed_logps(model, examples, tokenizer.pad_token_id, batch_size)


def preference_accuracy(model, tokenizer, pairs, max_length, batch_size):
    """Share of pairs where the policy gives the chosen answer a higher log-prob than the rejected:
    (by summed log-prob, by mean log-prob per answer token)."""
    prompts = [p.prompt for p in pairs]
    sums, means = {}, {}
    for side in ("chosen", "rejected"):
        examples = encode_examples(tokenizer, prompts, [getattr(p, side) for p in pairs], max_length)
        sums[side] = summed_logps(model, examples, tokenizer.pad_token_id, batch_size)
        means[side] = sums[side] / torch.tensor([len(ids) - prompt_len for ids, prompt_len in examples])
    return tuple((s["chosen"] > s["rejected"]).float().mean().item() for s in (sums, means))


def evaluate_policy(name, policy, sft, tokenizer, scorer, pairs, cfg, gen, seed):
    """All metrics of one policy on `pairs` (the test split), and its generations for people to read.

    sft is the SFT policy: the baseline of win_rate_vs_sft and the reference of kl_to_reference.
    """
    questions, references = [p.prompt for p in pairs], [p.chosen for p in pairs]
    answers, answer_ids = generate(policy, tokenizer, questions, gen, cfg.batch_size, seed, f"generate {name}")
    sft_answers, _ = generate(sft, tokenizer, questions, gen, cfg.batch_size, seed, "generate sft")
    rewards = scorer.score(questions, answers)
    kl = (answer_logps(policy, tokenizer, questions, answer_ids, cfg.batch_size)
          - answer_logps(sft, tokenizer, questions, answer_ids, cfg.batch_size))
    accuracy_sum, accuracy_mean = preference_accuracy(policy, tokenizer, pairs, cfg.max_length, cfg.batch_size)

    def win_rate_vs(others):  # the same text on both sides is a tie, whatever padding noise does to its scores
        return win_rate(rewards.tolist(), scorer.score(questions, others).tolist(),
                        [a == b for a, b in zip(answers, others)])

    metrics = {
        "bleu": bleu(references, answers),
        **rouge(references, answers),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        "win_rate_vs_sft": win_rate_vs(sft_answers),
        "win_rate_vs_reference": win_rate_vs(references),
        "preference_accuracy": accuracy_sum,
        "preference_accuracy_normalized": accuracy_mean,
        "kl_to_reference": kl.mean().item(),
        "mean_length": statistics.fmean(len(a.split()) for a in answers),
        "distinct_1": distinct_n(answers, 1),
        "distinct_2": distinct_n(answers, 2),
    }
    generations = [{"question": q, "reference": r, "answer": a, "reward": round(s, 4)}
                   for q, r, a, s in zip(questions, references, answers, rewards.tolist())]
    return metrics, generations
