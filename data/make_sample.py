"""Generate the shipped sample preference dataset, deterministically.

    python data/make_sample.py data/sample/preferences.csv

This script is the sample's provenance: the CSV it writes is committed, and a
test regenerates it and checks the bytes match. Standard library only.

Each row is a question, a preferred answer (correct, complete, polite) and a
less preferred one that is wrong, evasive, off-topic or truncated. The kinds of
flaw are chosen so that a small reward model can learn them from ~2,000 pairs
(a mismatched unit or operation, a wrong entry of a small fact table, an
answer to another question) while length alone does not separate the two
answers. Fact tables are kept small so each entry recurs often enough to learn.
"""

import csv
import random
import sys

SEED = 20240917
N_ROWS = 2500

CAPITALS = {
    'France': 'Paris',
    'Germany': 'Berlin',
    'Italy': 'Rome',
    'Spain': 'Madrid',
    'Portugal': 'Lisbon',
    'Japan': 'Tokyo',
    'Canada': 'Ottawa',
    'Egypt': 'Cairo',
    'Kenya': 'Nairobi',
    'Peru': 'Lima',
    'Norway': 'Oslo',
    'Sweden': 'Stockholm',
    'Poland': 'Warsaw',
    'Greece': 'Athens',
    'Ireland': 'Dublin',
}
SYMBOLS = {
    'hydrogen': 'H',
    'helium': 'He',
    'carbon': 'C',
    'nitrogen': 'N',
    'oxygen': 'O',
    'sodium': 'Na',
    'magnesium': 'Mg',
    'aluminium': 'Al',
    'silicon': 'Si',
    'sulfur': 'S',
    'chlorine': 'Cl',
    'potassium': 'K',
}
OPPOSITES = {
    'hot': 'cold',
    'tall': 'short',
    'early': 'late',
    'happy': 'sad',
    'light': 'dark',
    'open': 'closed',
    'empty': 'full',
    'fast': 'slow',
    'strong': 'weak',
    'rich': 'poor',
    'wet': 'dry',
    'loud': 'quiet',
}
YOUNG = {
    'cat': 'kitten',
    'dog': 'puppy',
    'cow': 'calf',
    'horse': 'foal',
    'sheep': 'lamb',
    'goat': 'kid',
    'frog': 'tadpole',
    'kangaroo': 'joey',
    'swan': 'cygnet',
    'goose': 'gosling',
}
DEFINITIONS = {
    'photosynthesis': 'the process by which plants use sunlight, water and carbon dioxide to make sugar and oxygen',
    'gravity': 'the force that pulls objects with mass towards each other, such as an apple towards the Earth',
    'evaporation': 'the change of a liquid into a gas, like water drying from a puddle in the sun',
    'a prime number': 'a whole number greater than one that is divisible only by one and itself',
    'a noun': 'a word that names a person, place, thing or idea',
    'a verb': 'a word that describes an action, a state or an occurrence',
    'an island': 'a piece of land completely surrounded by water',
    'a glacier': 'a large, slow-moving mass of ice formed from compacted snow',
    'a mammal': 'a warm-blooded animal with hair that feeds its young with milk',
    'democracy': 'a system of government in which citizens choose their leaders by voting',
    'inflation': 'a general rise in prices that reduces what a unit of money can buy',
    'a volcano': "an opening in the Earth's crust through which lava, ash and gases erupt",
}
UNITS = [  # (from, to, factor)
    ("kilometers", "meters", 1000), ("kilograms", "grams", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("feet", "inches", 12), ("liters", "milliliters", 1000),
    ("days", "hours", 24), ("weeks", "days", 7), ("meters", "centimeters", 100),
    ("years", "months", 12),
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


def _other(rng, table, key):
    """A value from `table` that is not the value of `key`."""
    return rng.choice([v for k, v in table.items() if v != table[key]])


def arithmetic(rng):
    op = rng.choice(list(OPS))
    a, b = rng.randint(2, 99), rng.randint(2, 30 if op == "times" else 99)
    q = rng.choice(["What is {a} {op} {b}?", "Can you tell me what {a} {op} {b} is?",
                    "Please calculate {a} {op} {b}."]).format(a=a, op=op, b=b)
    good = f"{a} {op} {b} equals {OPS[op](a, b)}."
    bad_op = rng.choice([o for o in OPS if o != op])  # answers a different operation
    wrong = f"{a} {bad_op} {b} equals {OPS[bad_op](a, b)}."
    return q, good, wrong


def conversion(rng):
    src, dst, factor = rng.choice(UNITS)
    n = rng.randint(2, 60)
    q = rng.choice(["How many {dst} are in {n} {src}?", "Convert {n} {src} to {dst}.",
                    "What is {n} {src} in {dst}?"]).format(n=n, src=src, dst=dst)
    good = f"{n} {src} is {n * factor} {dst}."
    wrong_dst = rng.choice([u[1] for u in UNITS if u[1] != dst])  # wrong unit
    wrong = f"{n} {src} is {n * factor} {wrong_dst}."
    return q, good, wrong


def capital(rng):
    c = rng.choice(list(CAPITALS))
    q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                    "Can you name the capital city of {c}?"]).format(c=c)
    return q, f"The capital of {c} is {CAPITALS[c]}.", f"The capital of {c} is {_other(rng, CAPITALS, c)}."


def symbol(rng):
    e = rng.choice(list(SYMBOLS))
    q = rng.choice(["What is the chemical symbol for {e}?", "Which symbol stands for {e}?",
                    "How is {e} written as a chemical symbol?"]).format(e=e)
    return (q, f"The chemical symbol for {e} is {SYMBOLS[e]}.",
            f"The chemical symbol for {e} is {_other(rng, SYMBOLS, e)}.")


def opposite(rng):
    w = rng.choice(list(OPPOSITES))
    q = rng.choice(["What is the opposite of '{w}'?", "Give me the opposite of the word '{w}'.",
                    "Which word means the opposite of '{w}'?"]).format(w=w)
    return (q, f"The opposite of '{w}' is '{OPPOSITES[w]}'.",
            f"The opposite of '{w}' is '{_other(rng, OPPOSITES, w)}'.")


def young(rng):
    a = rng.choice(list(YOUNG))
    q = rng.choice(["What is a baby {a} called?", "What do you call a young {a}?",
                    "What is the name for a {a}'s baby?"]).format(a=a)
    return q, f"A baby {a} is called a {YOUNG[a]}.", f"A baby {a} is called a {_other(rng, YOUNG, a)}."


def definition(rng):
    t = rng.choice(list(DEFINITIONS))
    q = rng.choice(["What is {t}?", "Can you define {t}?", "Please explain what {t} means."]).format(t=t)
    good = f"{t[0].upper()}{t[1:]} is {DEFINITIONS[t]}."
    wrong = f"{t[0].upper()}{t[1:]} is {_other(rng, DEFINITIONS, t)}."
    return q, good, wrong


FAMILIES = [arithmetic, conversion, capital, symbol, opposite, young, definition]


def polite(rng, core):
    return f"{rng.choice(PREFIXES)}{core}{rng.choice(SUFFIXES)}"


def truncate(rng, text):
    """Cut an answer off part-way through, mid-sentence, without the ending."""
    words = text.split()
    keep = max(2, int(len(words) * rng.uniform(0.35, 0.7)))
    return " ".join(words[:keep])


def make_rows(n_rows, seed):
    rng = random.Random(seed)
    drafts = [(i, *FAMILIES[i](rng)) for i in (rng.randrange(len(FAMILIES)) for _ in range(n_rows))]
    goods = {}  # family index -> its correct answers
    for i, _, good, _ in drafts:
        goods.setdefault(i, []).append(good)
    rows, seen = [], set()
    for i, q, good, wrong in drafts:
        chosen = polite(rng, good)
        kind = rng.choices(["wrong", "evasive", "off_topic", "truncated"], [0.3, 0.2, 0.25, 0.25])[0]
        if kind == "wrong":
            rejected = polite(rng, wrong)
        elif kind == "evasive":
            rejected = rng.choice(EVASIVE)
        elif kind == "off_topic":  # a good answer, but to a question of another family
            rejected = polite(rng, rng.choice(goods[rng.choice([j for j in goods if j != i])]))
        else:
            rejected = truncate(rng, chosen)
        if (q, chosen, rejected) not in seen:  # the sample itself has no exact duplicates
            seen.add((q, chosen, rejected))
            rows.append((q, chosen, rejected))
    return rows


def main(path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Question", "More_Prefered", "Less_Prefered"])
        writer.writerows(make_rows(N_ROWS, SEED))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/make_sample.py OUTPUT.csv")
    main(sys.argv[1])
