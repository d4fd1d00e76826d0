"""Verifiable rewards: rules declared in params (`rules`), checked on an answer's text, never code from the params.

Each rule is a kind and, for some kinds, a pattern. A rule that needs an expected answer reads the one the data set
maps (data.<set>.columns.answer, kept as Pair.answer); a prompt without one is not counted for that rule.

  number  the expected number appears in the answer as a number of its own ("480" in "40 years is 480 months",
          not in "4800"; thousands separators ignored)
  exact   the answer equals the expected one after normalisation: lower case, punctuation and articles dropped,
          spaces collapsed (SQuAD's normalisation)
  regex   the pattern (Python `re`) is found in the answer; a `{expected}` in it stands for the expected answer,
          escaped, and then a prompt without one is not counted
  format  the answer ended its turn (end-of-turn or EOS generated) within the token limit: it did not run on

A rule passes (1.0) or fails (0.0); the online stage weighs each (online.reward.rules) into the reward, and
evaluate reports each one's pass rate on the held-out prompts.
"""

import re
import string

import torch

RULE_KINDS = ("number", "exact", "regex", "format")
NEEDS_EXPECTED = ("number", "exact")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def numbers(text):
    """The numbers written in `text`, as floats ("1,000" is one number, 1000.0)."""
    return [float(n) for n in _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))]


def normalize(text):
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def expected_pattern(pattern, expected):
    """`pattern` with each {expected} replaced by the escaped expected answer."""
    return pattern.replace("{expected}", re.escape(expected))


def check(kind, pattern, answer, expected, ended):
    """Whether one answer passes one rule: True, False, or None where the rule does not apply (no expected answer).

    answer: the decoded text; expected: the expected answer ("" when the data set has none for this prompt);
    ended: whether the answer ended its turn within the token limit."""
    if kind == "format":
        return ended
    needs = kind in NEEDS_EXPECTED or "{expected}" in (pattern or "")
    if needs and not expected:
        return None
    if kind == "number":
        want = numbers(expected)
        return bool(want) and want[0] in numbers(answer)
    if kind == "exact":
        return normalize(answer) == normalize(expected)
    if kind == "regex":
        return re.search(expected_pattern(pattern, expected), answer) is not None
    raise ValueError(f"unknown rule kind {kind!r}; expected one of {', '.join(RULE_KINDS)}")


class Rules:
    """The rules of params' `rules` section, checked together. rules: {name: RuleParams (kind, pattern)}."""

    def __init__(self, rules):
        self.rules = dict(rules)

    @property
    def names(self):
        return list(self.rules)

    def check(self, answers, expected, ended):
        """{name: [True/False/None per answer]} (None: the rule does not apply to that prompt)."""
        return {
            name: [check(r.kind, r.pattern, a, e, d) for a, e, d in zip(answers, expected, ended)]
            for name, r in self.rules.items()
        }

    @staticmethod
    def reward(passed, weights, n):
        """sum over rules of weights[name] x pass (1.0 or 0.0; 0.0 where the rule does not apply): (n,)."""
        total = torch.zeros(n)
        for name, weight in weights.items():
            total += weight * torch.tensor([float(bool(p)) for p in passed[name]])
        return total
