"""Generate the shipped sample preference dataset, deterministically.

    python data/make_sample.py data/sample/preferences.csv

This script is the sample's provenance: the CSV it writes is committed, and a
test regenerates it and checks the bytes match. Standard library only.

Each row is a question, a preferred answer (correct, complete, polite) and a
less preferred one that is
- wrong: a common mistake, the same one each time for a given fact (Sydney for
  the capital of Australia, a synonym for an opposite, a confused unit);
- evasive: declines to answer;
- off-topic: an unrelated remark;
- truncated: the preferred answer cut off mid-sentence.
Wrong and off-topic answers are wrapped in the same polite words as the
preferred one, so only their content tells them apart. Each kind of flaw is
learnable from ~2,000 pairs by a small reward model trained from scratch, while
length alone does not separate the two answers (see chosen_longer_share in
metrics/data.json).

The Answer column holds the expected number of the arithmetic and conversion
questions (empty for the others): what a verifiable rule checks an answer
against (params.yaml's rules, data.helpful.columns.answer).
"""

import csv
import random
import sys

SEED = 20240917
N_ROWS = 2500

# fact -> (correct, common mistake)
CAPITALS = {
    "Australia": ("Canberra", "Sydney"), "Canada": ("Ottawa", "Toronto"), "Brazil": ("Brasilia", "Rio de Janeiro"),
    "Turkey": ("Ankara", "Istanbul"), "India": ("New Delhi", "Mumbai"), "Switzerland": ("Bern", "Zurich"),
    "Nigeria": ("Abuja", "Lagos"), "Morocco": ("Rabat", "Casablanca"), "New Zealand": ("Wellington", "Auckland"),
    "Vietnam": ("Hanoi", "Ho Chi Minh City"), "Pakistan": ("Islamabad", "Karachi"), "China": ("Beijing", "Shanghai"),
    "Italy": ("Rome", "Milan"), "Spain": ("Madrid", "Barcelona"), "Scotland": ("Edinburgh", "Glasgow"),
}
SYMBOLS = {
    "gold": ("Au", "Go"), "silver": ("Ag", "Si"), "iron": ("Fe", "Ir"), "sodium": ("Na", "So"),
    "potassium": ("K", "P"), "lead": ("Pb", "Le"), "copper": ("Cu", "Co"), "tin": ("Sn", "Ti"),
    "mercury": ("Hg", "Me"), "helium": ("He", "H"), "tungsten": ("W", "Tu"), "chlorine": ("Cl", "C"),
}
OPPOSITES = {  # the mistake gives a synonym instead of an opposite
    "hot": ("cold", "warm"), "tall": ("short", "high"), "early": ("late", "soon"), "happy": ("sad", "glad"),
    "fast": ("slow", "quick"), "strong": ("weak", "tough"), "rich": ("poor", "wealthy"), "loud": ("quiet", "noisy"),
    "hard": ("soft", "firm"), "clean": ("dirty", "tidy"), "wide": ("narrow", "broad"), "begin": ("end", "start"),
}
YOUNG = {
    "cat": ("kitten", "cub"), "dog": ("puppy", "kitten"), "cow": ("calf", "foal"), "horse": ("foal", "calf"),
    "sheep": ("lamb", "kid"), "goat": ("kid", "lamb"), "kangaroo": ("joey", "cub"), "swan": ("cygnet", "duckling"),
    "frog": ("tadpole", "larva"), "deer": ("fawn", "pup"),
}
DEFINITIONS = {
    "photosynthesis": ("the process by which plants use sunlight, water and carbon dioxide to make sugar and oxygen",
                       "the way plants breathe in oxygen at night and sleep until the morning"),
    "gravity": ("the force that pulls objects with mass towards each other, such as an apple towards the Earth",
                "a force that only exists on Earth because of the air pressing down on things"),
    "evaporation": ("the change of a liquid into a gas, like water drying from a puddle in the sun",
                    "what happens when water soaks down into the ground and disappears"),
    "a prime number": ("a whole number greater than one that is divisible only by one and itself",
                       "any odd number, since odd numbers cannot be divided by anything"),
    "a noun": ("a word that names a person, place, thing or idea", "a word that describes how an action is done"),
    "an island": ("a piece of land completely surrounded by water", "any land that is next to the sea"),
    "a glacier": ("a large, slow-moving mass of ice formed from compacted snow", "a frozen lake that melts every spring"),
    "a mammal": ("a warm-blooded animal with hair that feeds its young with milk", "any animal that lives on land"),
    "democracy": ("a system of government in which citizens choose their leaders by voting",
                  "a system in which a king makes every decision for the people"),
    "inflation": ("a general rise in prices that reduces what a unit of money can buy",
                  "when a bank adds extra money to everyone's account"),
    "friction": ("the force that resists motion when two surfaces rub against each other",
                 "the force that makes objects speed up as they slide"),
    "an algorithm": ("a finite list of precise steps for solving a problem or doing a task",
                     "a kind of computer virus that spreads by email"),
}
UNITS = [  # (from, to, factor, the unit people confuse `to` with)
    ("kilometers", "meters", 1000, "miles"), ("kilograms", "grams", 1000, "pounds"),
    ("hours", "minutes", 60, "seconds"), ("minutes", "seconds", 60, "hours"), ("feet", "inches", 12, "yards"),
    ("liters", "milliliters", 1000, "gallons"), ("days", "hours", 24, "weeks"), ("weeks", "days", 7, "months"),
    ("meters", "centimeters", 100, "millimeters"), ("years", "months", 12, "decades"),
]
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}

PREFIXES = ["Sure! ", "Good question. ", "Happy to help. ", "Of course. ", "Certainly. ", ""]
SUFFIXES = ["", "", " I hope that helps!", " Let me know if you have other questions.", " Glad to help."]
EVASIVE = [
    "I'm not really sure about that one. You might want to look it up somewhere else.",
    "That is a tricky question and I would rather not guess at the answer right now.",
    "Hmm, it depends on a lot of things. Maybe ask someone who knows more about it than I do.",
    "I could answer, but it is probably better if you work it out for yourself this time.",
    "There are many opinions on this, so I can't really give you a single answer here.",
    "Let's talk about something else instead, this question is not very interesting to me.",
    "I don't have time to go into that. Try searching for it online later today.",
]
# Off-topic remarks: {thing} and {place} vary them.
OFF_TOPIC = [
    "My favourite {thing} is the one my grandmother gave me years ago.",
    "The weather in {place} has been lovely this week, sunny and warm.",
    "I once saw a {thing} at a market in {place}, it was very colourful.",
    "Did you know that bananas are a good source of potassium?",
    "The train to {place} leaves at nine every morning, so be early.",
    "A good {thing} can make a long afternoon much more pleasant.",
    "People in {place} often go for a walk after dinner.",
]
THINGS = ["umbrella", "teapot", "bicycle", "kite", "notebook", "scarf", "lamp", "guitar"]
PLACES = ["Lisbon", "Oslo", "Kyoto", "Cairo", "Lima", "Vienna", "Dublin", "Hanoi"]


def arithmetic(rng):
    op = rng.choice(list(OPS))
    a, b = rng.randint(2, 99), rng.randint(2, 30 if op == "times" else 99)
    q = rng.choice(["What is {a} {op} {b}?", "Can you tell me what {a} {op} {b} is?",
                    "Please calculate {a} {op} {b}."]).format(a=a, op=op, b=b)
    return q, f"{a} {op} {b} equals {OPS[op](a, b)}.", None, OPS[op](a, b)  # no learnable "wrong" for sums


def conversion(rng):
    src, dst, factor, confused = rng.choice(UNITS)
    n = rng.randint(2, 60)
    q = rng.choice(["How many {dst} are in {n} {src}?", "Convert {n} {src} to {dst}.",
                    "What is {n} {src} in {dst}?"]).format(n=n, src=src, dst=dst)
    return q, f"{n} {src} is {n * factor} {dst}.", f"{n} {src} is {n * factor} {confused}.", n * factor


def capital(rng):
    c = rng.choice(list(CAPITALS))
    q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                    "Can you name the capital city of {c}?"]).format(c=c)
    good, bad = CAPITALS[c]
    return q, f"The capital of {c} is {good}.", f"The capital of {c} is {bad}.", None


def symbol(rng):
    e = rng.choice(list(SYMBOLS))
    q = rng.choice(["What is the chemical symbol for {e}?", "Which symbol stands for {e}?",
                    "How is {e} written as a chemical symbol?"]).format(e=e)
    good, bad = SYMBOLS[e]
    return q, f"The chemical symbol for {e} is {good}.", f"The chemical symbol for {e} is {bad}.", None


def opposite(rng):
    w = rng.choice(list(OPPOSITES))
    q = rng.choice(["What is the opposite of '{w}'?", "Give me the opposite of the word '{w}'.",
                    "Which word means the opposite of '{w}'?"]).format(w=w)
    good, bad = OPPOSITES[w]
    return q, f"The opposite of '{w}' is '{good}'.", f"The opposite of '{w}' is '{bad}'.", None


def young(rng):
    a = rng.choice(list(YOUNG))
    q = rng.choice(["What is a baby {a} called?", "What do you call a young {a}?",
                    "What is the name for a {a}'s baby?"]).format(a=a)
    good, bad = YOUNG[a]
    return q, f"A baby {a} is called a {good}.", f"A baby {a} is called a {bad}.", None


def definition(rng):
    t = rng.choice(list(DEFINITIONS))
    q = rng.choice(["What is {t}?", "Can you define {t}?", "Please explain what {t} means."]).format(t=t)
    good, bad = DEFINITIONS[t]
    term = t[0].upper() + t[1:]
    return q, f"{term} is {good}.", f"{term} is {bad}.", None


FAMILIES = [arithmetic, conversion, capital, symbol, opposite, young, definition]


def truncate(rng, text):
    """Cut an answer off part-way through, mid-sentence, without the ending."""
    words = text.split()
    keep = max(2, int(len(words) * rng.uniform(0.35, 0.7)))
    return " ".join(words[:keep])


def make_rows(n_rows, seed):
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(n_rows):
        q, good, wrong, answer = rng.choice(FAMILIES)(rng)
        prefix, suffix = rng.choice(PREFIXES), rng.choice(SUFFIXES)
        chosen = prefix + good + suffix
        kinds, weights = ["wrong", "evasive", "off_topic", "truncated"], [0.3, 0.2, 0.25, 0.25]
        kind = rng.choices(kinds[1:] if wrong is None else kinds, weights[1:] if wrong is None else weights)[0]
        if kind == "wrong":
            rejected = prefix + wrong + suffix
        elif kind == "evasive":
            rejected = rng.choice(EVASIVE)
        elif kind == "off_topic":
            remark = rng.choice(OFF_TOPIC).format(thing=rng.choice(THINGS), place=rng.choice(PLACES))
            rejected = prefix + remark + suffix
        else:
            rejected = truncate(rng, chosen)
        if (q, chosen, rejected) not in seen:  # the sample itself has no exact duplicates
            seen.add((q, chosen, rejected))
            rows.append((q, chosen, rejected, "" if answer is None else answer))
    return rows


def main(path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Question", "More_Prefered", "Less_Prefered", "Answer"])
        writer.writerows(make_rows(N_ROWS, SEED))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/make_sample.py OUTPUT.csv")
    main(sys.argv[1])
