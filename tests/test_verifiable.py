"""Verifiable rules on crafted answers: each kind, where it applies, and the reward they make."""

import pytest
import torch

from alignkit.online import summarise
from alignkit.params import RuleParams
from alignkit.verifiable import Rules, check, normalize, numbers


def test_numbers_are_read_whole_with_thousands_separators():
    assert numbers("40 years is 480 months, or 1,000 and -3.5") == [40.0, 480.0, 1000.0, -3.5]


@pytest.mark.parametrize(
    "answer, passes",
    [
        ("40 years is 480 months.", True),
        ("That is 480.", True),
        ("It is 4800 months.", False),  # 480 only as part of another number
        ("It is 48 months.", False),
        ("Four hundred and eighty.", False),  # words are not numbers
        ("", False),
    ],
)
def test_number_rule(answer, passes):
    assert check("number", None, answer, "480", True) is passes


def test_number_rule_reads_negative_and_separated_numbers():
    assert check("number", None, "26 minus 37 equals -11.", "-11", True) is True
    assert check("number", None, "26 minus 37 equals 11.", "-11", True) is False
    assert check("number", None, "That is 1,440 minutes.", "1440", True) is True


def test_exact_rule_normalises_case_punctuation_and_articles():
    assert normalize("  The Canberra!  ") == "canberra"
    assert check("exact", None, "Canberra.", "canberra", True) is True
    assert check("exact", None, "The capital is Canberra.", "Canberra", True) is False


def test_regex_rule_with_and_without_the_expected_answer():
    assert check("regex", r"^(Sure|Yes)\b", "Sure, here it is.", "", True) is True
    assert check("regex", r"^(Sure|Yes)\b", "No.", "", True) is False
    assert check("regex", r"equals {expected}\.$", "2 plus 2 equals 4.", "4", True) is True
    assert check("regex", r"equals {expected}\.$", "2 plus 2 equals 5.", "4", True) is False
    # the expected answer is escaped: "1.5" does not match "125"
    assert check("regex", r"is {expected}", "it is 125", "1.5", True) is False
    # a pattern that needs an expected answer does not apply to a prompt without one
    assert check("regex", r"equals {expected}", "equals 4", "", True) is None


def test_format_rule_is_whether_the_answer_ended_its_turn():
    assert check("format", None, "cut off mid", "", False) is False
    assert check("format", None, "Done.", "480", True) is True


def test_rules_that_need_an_expected_answer_do_not_apply_without_one():
    assert check("number", None, "It is 480.", "", True) is None
    assert check("exact", None, "480", "", True) is None


def test_rules_reward_and_pass_rates():
    rules = Rules(
        {"number": RuleParams(kind="number", pattern=None), "ends_turn": RuleParams(kind="format", pattern=None)}
    )
    answers = ["It is 480.", "It is 12.", "The capital is Rome"]
    passed = rules.check(answers, ["480", "480", ""], [True, True, False])
    assert passed == {"number": [True, False, None], "ends_turn": [True, True, False]}
    # 1.0 x number + 0.5 x ends_turn; a rule that does not apply adds nothing
    reward = Rules.reward(passed, {"number": 1.0, "ends_turn": 0.5}, 3)
    assert torch.equal(reward, torch.tensor([1.5, 0.5, 0.0]))
    # each rule's pass rate over the answers it applies to (the online stage's curves and metrics)
    assert {name: summarise(v) for name, v in passed.items()} == {"number": 0.5, "ends_turn": pytest.approx(2 / 3)}
