"""Evaluation of a policy on the test split: generations, text metrics, reward, win rates, KL."""

import statistics

import torch

from alignkit.batching import in_order, sorted_batches
from alignkit.conversation import Renderer, as_text, to_json
from alignkit.policy import collate, forward_logps, max_prompt_tokens
from alignkit.stats import bootstrap_ci, mean
from alignkit.textmetrics import bleu, distinct_n, rouge, win_items
from alignkit.training import progress


class RowNoise:
    """A logits processor that samples each row of a batch from its own seeded generator, so that a row's answer does
    not depend on which rows share its batch (or its process): after temperature, top-k and top-p (as Hugging Face's
    sampling applies them), it adds Gumbel noise drawn from the row's torch.Generator, and greedy decoding then picks
    argmax(scores + Gumbel), a sample of the row's distribution (the Gumbel-max trick)."""

    def __init__(self, seeds, temperature, top_k, top_p):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        self.warpers += [TopKLogitsWarper(top_k)] if top_k else []
        self.warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []

    def __call__(self, input_ids, scores):
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).clamp(1e-20, 1 - 1e-7)
        return scores + (-torch.log(-torch.log(uniform))).to(scores.device, scores.dtype)


@torch.no_grad()
def generate(model, tokenizer, prompts, gen, batch_size, seed, desc, max_prompt_length, row_seeds=None):
    """Sampled answers, batched with left padding: ([answer text], [answer ids, end-of-turn included if produced]).

    gen: temperature, top_p, top_k, max_new_tokens (and do_sample=False for greedy). desc: the progress bar's
    label (None: no bar). Prompts (Messages) are rendered by Renderer and fitted to max_prompt_tokens (oldest turns
    dropped first). Seeded, so every model evaluated with the same seed sees the same sampling noise; row_seeds (one
    per prompt): each answer sampled from its own seeded generator instead (RowNoise), whatever shares its batch.
    """
    torch.manual_seed(seed)
    model.eval()
    renderer = Renderer(tokenizer)
    budget = max_prompt_tokens(model.config, gen["max_new_tokens"], max_prompt_length)
    texts, ids = [], []
    starts = range(0, len(prompts), batch_size)
    for start in progress(starts, desc) if desc else starts:
        queries = [renderer.fit_prompt(m, budget)[0] for m in prompts[start : start + batch_size]]
        width = max(map(len, queries))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(q)) + q for q in queries])
        attention_mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in queries])
        if row_seeds is None:
            sampling = {"do_sample": True, **gen}
        else:
            from transformers import LogitsProcessorList

            noise = RowNoise(row_seeds[start : start + batch_size], gen["temperature"], gen["top_k"], gen["top_p"])
            sampling = {
                "do_sample": False,  # greedy over the noised scores: each row's own sample
                "max_new_tokens": gen["max_new_tokens"],
                "logits_processor": LogitsProcessorList([noise]),
                # the model's own generation config must not add sampling settings of its own
                "temperature": None,
                "top_p": None,
                "top_k": None,
            }
        out = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=renderer.stop_ids,
            **sampling,
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
    """Per pair whose question fits, whether the policy gives the chosen answer a higher log-prob than the
    rejected: ([by summed log-prob], [by mean log-prob per answer token]), each a list of 1.0 / 0.0."""
    renderer = Renderer(tokenizer)
    encoded, _ = renderer.encode_pairs(pairs, max_length, max_prompt_length)  # pairs whose question fits
    sums, means = {}, {}
    for side, examples in zip(("chosen", "rejected"), zip(*encoded)):
        sums[side] = summed_logps(model, examples, tokenizer.pad_token_id, batch_size, f"{desc} ({side})")
        means[side] = sums[side] / torch.tensor([len(ids) - prompt_len for ids, prompt_len in examples])
    return tuple((s["chosen"] > s["rejected"]).float().tolist() for s in (sums, means))


def with_interval(name, values, cfg, seed):
    """{name: mean, name_ci: [lo, hi]}: a mean over test prompts and its bootstrap interval (eval.confidence)."""
    return {
        name: mean(values),
        f"{name}_ci": bootstrap_ci(values, cfg.confidence, cfg.bootstrap_samples, seed),
    }


def scored(prefix, models, combined, raw, ref_combined, ref_raw, same_as_reference, cfg, seed):
    """The mean score and the win rate against the preferred answers, with intervals, of the combined score and
    of each model's own: reward_mean, win_rate_vs_reference and reward_models.<name> for the reward models
    (prefix reward); judge_mean, judge_win_rate_vs_reference and judges.<name> for the judges (prefix judge)."""

    def block(mine, reference):
        return {
            **with_interval("mean", mine, cfg, seed),
            **with_interval("win_rate_vs_reference", win_items(mine, reference, same_as_reference), cfg, seed),
        }

    overall = block(combined.tolist(), ref_combined.tolist())
    win = "win_rate_vs_reference" if prefix == "reward" else f"{prefix}_win_rate_vs_reference"
    named = {f"{prefix}_mean": "mean", win: "win_rate_vs_reference"}
    per_model = {m: block(raw[m].tolist(), ref_raw[m].tolist()) for m in models.names}
    return {
        **{key: overall[own] for key, own in named.items()},
        **{f"{key}_ci": overall[f"{own}_ci"] for key, own in named.items()},
        "reward_models" if prefix == "reward" else "judges": per_model,
    }


def ended_turn(ids, stop_ids):
    """Per answer (its ids, as generate returns them), whether it ends with an end-of-turn or EOS: it stopped within
    the token limit instead of running on."""
    return [len(a) > 0 and a[-1] in stop_ids for a in ids]


def rule_passes(rules, pairs, answers, answer_ids, tokenizer):
    """{rule: [True/False/None per answer]} (None: the rule does not apply to that prompt), for verifiable.Rules."""
    ended = ended_turn(answer_ids, Renderer(tokenizer).stop_ids)
    return rules.check(answers, [p.answer for p in pairs], ended)


def rule_metrics(passed, cfg, seed):
    """{rule: {pass_rate, pass_rate_ci, n}} over the prompts each rule applies to (pass_rate null where none)."""
    out = {}
    for name, values in passed.items():
        counted = [float(v) for v in values if v is not None]
        out[name] = (
            {**with_interval("pass_rate", counted, cfg, seed), "n": len(counted)}
            if counted
            else {
                "pass_rate": None,
                "pass_rate_ci": None,
                "n": 0,
            }
        )
    return out


def evaluate_policy(name, policy, sft, tokenizer, scorer, judges, pairs, cfg, gen, seed, rules=None):
    """All metrics of one policy on `pairs` (the test split), and its generations for people to read.

    sft is the SFT policy: the reference of kl_to_reference (when it is `policy` itself, the KL is 0). scorer:
    the reward models the policies trained on (ensemble.RewardModels), the proxy; judges: the judge models only
    evaluation reads (None: none), combined as the reward models are (ppo.reward). Every mean over prompts has
    its bootstrap interval (<key>_ci) at eval.confidence, and n says over how many prompts. Comparisons between
    models (win rates against SFT, paired tests, the verdict) are the compare stage's, from the generations:
    each model's answers are generated and scored here once. rules: the verifiable rules (verifiable.Rules), each
    one's pass rate reported over the prompts it applies to; None: none.
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
    same_as_reference = [a == r for a, r in zip(answers, references)]  # a tie, whatever padding does to scores
    logps = answer_logps(policy, tokenizer, questions, answer_ids, cfg.batch_size, budget, f"log-probs {name}")
    kl = logps - (
        logps
        if sft is policy
        else answer_logps(sft, tokenizer, questions, answer_ids, cfg.batch_size, budget, "log-probs sft")
    )
    by_sum, by_mean = preference_accuracy(
        policy, tokenizer, pairs, cfg.max_length, cfg.max_prompt_length, cfg.batch_size, f"test pairs {name}"
    )
    rewards, raw = scorer.score(questions, answers, unsafe, f"score {name}")
    ref_rewards, ref_raw = scorer.score(questions, references, unsafe, "score reference")
    proxy = scored("reward", scorer, rewards, raw, ref_rewards, ref_raw, same_as_reference, cfg, seed)
    if judges is not None:
        judged, judged_raw = judges.score(questions, answers, unsafe, f"judge {name}")
        judge = scored(
            "judge",
            judges,
            judged,
            judged_raw,
            *judges.score(questions, references, unsafe, "judge reference"),
            same_as_reference,
            cfg,
            seed,
        )
    violated = scorer.violations(raw, unsafe)  # per unsafe prompt, 1.0 for an answer below the threshold
    passed = rule_passes(rules, pairs, answers, answer_ids, tokenizer) if rules is not None else {}

    metrics = {
        "n": len(pairs),
        "n_unsafe": sum(unsafe),
        "bleu": bleu(references, answers),
        **rouge(references, answers),
        **{k: v for k, v in proxy.items() if k != "reward_models"},
        "reward_std": rewards.std().item(),
        "reward_models": proxy["reward_models"],
        **(judge if judges is not None else {}),
        **(with_interval("safety_violation_rate", violated, cfg, seed) if violated is not None else {}),
        **({"rules": rule_metrics(passed, cfg, seed)} if passed else {}),
        "n_pairs": len(by_sum),
        **with_interval("preference_accuracy", by_sum, cfg, seed),
        **with_interval("preference_accuracy_normalized", by_mean, cfg, seed),
        **with_interval("kl_to_reference", kl.tolist(), cfg, seed),
        "mean_length": statistics.fmean(len(a.split()) for a in answers),
        "distinct_1": distinct_n(answers, 1),
        "distinct_2": distinct_n(answers, 2),
    }
    unsafe_index = [i for i, u in enumerate(unsafe) if u]
    violation_at = dict(zip(unsafe_index, violated)) if violated is not None else {}
    generations = [
        {
            "question": as_text(q),
            "prompt": to_json(q),
            "set": p.source,
            "unsafe": u,
            "reference": r,
            "answer": a,
            "reward": round(s, 4),
            "scores": {m: round(raw[m][i].item(), 4) for m in scorer.names},
            "reference_reward": round(ref_rewards[i].item(), 4),
            **(
                {
                    "judge": round(judged[i].item(), 4),
                    "judge_scores": {m: round(judged_raw[m][i].item(), 4) for m in judges.names},
                }
                if judges is not None
                else {}
            ),
            "violation": bool(violation_at[i]) if i in violation_at else None,
            **({"rules": {rule: values[i] for rule, values in passed.items()}} if passed else {}),
            "kl": round(kl[i].item(), 4),
        }
        for i, (p, q, u, r, a, s) in enumerate(zip(pairs, questions, unsafe, references, answers, rewards.tolist()))
    ]
    return metrics, generations
