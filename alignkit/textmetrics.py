"""Text metrics computed locally: no hub downloads and no downloaded NLTK data.

The `evaluate` package fetches its metric scripts from the hub at run time,
which fails offline, so BLEU comes from nltk and ROUGE from rouge_score directly.
"""

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text):
    """Lower-cased words and punctuation marks, by a regular expression (no NLTK data needed)."""
    return _TOKEN.findall(text.lower())


def bleu(references, hypotheses):
    """Corpus BLEU-4 with smoothing (Chen & Cherry method 1), one reference per hypothesis."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    return corpus_bleu(
        [[tokenize(r)] for r in references],
        [tokenize(h) for h in hypotheses],
        smoothing_function=SmoothingFunction().method1,
    )


def rouge(references, hypotheses):
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 with Porter stemming: {"rouge1": .., "rouge2": .., "rougeL": ..}."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h) for r, h in zip(references, hypotheses)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeL")}


def distinct_n(texts, n):
    """Distinct n-grams over all texts / all n-grams (0 when there are none)."""
    grams = [tuple(t[i : i + n]) for t in map(tokenize, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def win_items(scores, baseline_scores, same=None):
    """Per item: 1.0 where scores beat baseline_scores, 0.5 for a tie, 0.0 where they lose.

    same[i] True marks item i a tie whatever its two scores: the same answer text on both sides. Scored in
    batches padded differently, one text's two scores can differ in their last bits, and that noise must
    not decide a win."""
    same = same or [False] * len(scores)
    return [0.5 if tie else float(s > b) + 0.5 * (s == b) for s, b, tie in zip(scores, baseline_scores, same)]


def win_rate(scores, baseline_scores, same=None):
    """Share of items where scores beat baseline_scores; ties count half (win_items)."""
    return sum(win_items(scores, baseline_scores, same)) / len(scores)
