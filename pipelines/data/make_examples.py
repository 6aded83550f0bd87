"""Write the small generated example sets of pipelines/data/ (issue 9): instruct.jsonl, ner.jsonl
and summarize.jsonl. Every row comes from templates and word lists in this file (no outside text,
so no licence applies), drawn with a seeded random generator: rerunning the script rewrites the
same bytes.

    python pipelines/data/make_examples.py            # rewrite the three files
    python pipelines/data/make_examples.py --check    # exit 1 if a file differs from what it writes
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = 400

# --- word lists ------------------------------------------------------------------------------

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa",
    "Norway": "Oslo", "Sweden": "Stockholm", "Greece": "Athens", "Poland": "Warsaw", "Austria": "Vienna",
    "Ireland": "Dublin", "Chile": "Santiago", "Cuba": "Havana", "India": "New Delhi", "China": "Beijing",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "day": "night", "open": "closed",
    "early": "late", "happy": "sad", "light": "dark", "full": "empty", "old": "new", "wet": "dry",
    "left": "right", "loud": "quiet", "hard": "soft",
}
WORDS = ["apple", "river", "stone", "cloud", "green", "table", "music", "bread", "light", "tiger",
         "paper", "horse", "water", "chair", "smile", "train", "dream", "glass", "ocean", "candle"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

FIRST = ["Ada", "Liam", "Maya", "Omar", "Sofia", "Noah", "Elena", "Ravi", "Chloe", "Mateo", "Hana",
         "Jonas", "Aisha", "Pedro", "Ingrid", "Kenji", "Lucia", "Tariq", "Nora", "Felix"]
LAST = ["Lovelace", "Moreau", "Okafor", "Schmidt", "Tanaka", "Silva", "Novak", "Haddad", "Larsen",
        "Rossi", "Kowalski", "Brennan", "Patel", "Duarte", "Lindqvist", "Mensah"]
CITIES = ["Paris", "Berlin", "Lagos", "Osaka", "Lima", "Oslo", "Cairo", "Dublin", "Porto", "Quito",
          "New York", "Cape Town", "Buenos Aires", "Kuala Lumpur", "Rio de Janeiro", "Tel Aviv"]
ORGS = ["Acme Corp", "Blue Harbor Bank", "Northwind", "Globex", "Red Kite Labs", "Orion Foods",
        "the United Nations", "Greenfield University", "Vertex Motors", "Solaris Energy", "Pinecrest Hospital",
        "the Red Cross", "Helios Airlines", "Quantum Works"]
ORG_THE = {"the United Nations", "the Red Cross"}  # "the" is a word tagged O before the name

TOWNS = ["Lakeside", "Millbrook", "Ashford", "Riverton", "Cedar Falls", "Oakridge", "Port Elsey",
         "Highmoor", "Westvale", "Stonebridge", "Fairhaven", "Brightwater"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
BUILDS = ["library", "bridge", "school", "hospital", "park", "swimming pool", "bus station", "museum"]
TEAMS = ["Lions", "Eagles", "Rovers", "Falcons", "United", "Rangers", "Comets", "Wolves", "Pirates", "Storm"]
COMPANIES = ["Acme Corp", "Northwind", "Globex", "Orion Foods", "Vertex Motors", "Solaris Energy",
             "Helios Airlines", "Quantum Works", "Blue Harbor Bank", "Red Kite Labs"]
WEATHER = [("heavy rain", "Heavy rain"), ("strong winds", "Strong winds"), ("snow", "Snow"),
           ("a heat wave", "Heat wave"), ("thick fog", "Thick fog")]


# --- instructions ----------------------------------------------------------------------------


def instruct_row(rng: random.Random) -> dict:
    kind = rng.randrange(9)
    if kind == 0:
        ws = rng.sample(WORDS, rng.randint(2, 4))
        return {"prompt": f"Reverse the words: {' '.join(ws)}", "response": " ".join(reversed(ws))}
    if kind == 1:
        country = rng.choice(list(CAPITALS))
        return {"prompt": f"What is the capital of {country}?", "response": f"{CAPITALS[country]}."}
    if kind == 2:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return {"prompt": f"Add {a} and {b}.", "response": str(a + b)}
    if kind == 3:
        w = rng.choice(WORDS)
        return {"prompt": f"Uppercase: {w}", "response": w.upper()}
    if kind == 4:
        w = rng.choice(list(OPPOSITES))
        return {"prompt": f"What is the opposite of {w}?", "response": f"{OPPOSITES[w].capitalize()}."}
    if kind == 5:
        n = rng.randint(0, 98)
        return {"prompt": f"What number comes after {n}?", "response": str(n + 1)}
    if kind == 6:
        w = rng.choice(WORDS)
        return {"prompt": f"Repeat twice: {w}", "response": f"{w} {w}"}
    if kind == 7:
        ws = [rng.choice(WORDS) for _ in range(rng.randint(1, 10))]
        return {"prompt": f"How many words are there in: {' '.join(ws)}", "response": NUMBER_WORDS[len(ws)]}
    w = rng.choice(WORDS)
    return {"prompt": f"What is the first letter of {w}?", "response": w[0]}


# --- tagged words (BIO: PER, LOC, ORG) -------------------------------------------------------


def _entity(name: str, kind: str) -> list[tuple[str, str]]:
    words = name.split(" ")
    out = []
    if kind == "ORG" and name in ORG_THE:
        out.append((words[0], "O"))
        words = words[1:]
    return out + [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]


def _person(rng: random.Random) -> str:
    return rng.choice(FIRST) if rng.random() < 0.3 else f"{rng.choice(FIRST)} {rng.choice(LAST)}"


NER_TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{PER} moved to {LOC} last year .",
    "{ORG} opened a new office in {LOC} .",
    "Yesterday {PER} met {PER} at the {ORG} offices .",
    "{PER} , a doctor from {LOC} , joined {ORG} .",
    "The mayor of {LOC} thanked {PER} for the gift .",
    "{ORG} hired {PER} as its new director .",
    "Flights from {LOC} to {LOC} were cancelled on Monday .",
    "{PER} said that {ORG} will grow next year .",
    "In {LOC} , {PER} won the chess tournament .",
    "Shares of {ORG} rose after {PER} spoke .",
    "We visited {LOC} and stayed with {PER} .",
]


def ner_row(rng: random.Random) -> dict:
    pairs: list[tuple[str, str]] = []
    for piece in rng.choice(NER_TEMPLATES).split(" "):
        if piece == "{PER}":
            pairs += _entity(_person(rng), "PER")
        elif piece == "{LOC}":
            pairs += _entity(rng.choice(CITIES), "LOC")
        elif piece == "{ORG}":
            pairs += _entity(rng.choice(ORGS), "ORG")
        else:
            pairs.append((piece, "O"))
    return {"tokens": [w for w, _ in pairs], "tags": [t for _, t in pairs]}


# --- reports -> headlines --------------------------------------------------------------------


def summarize_row(rng: random.Random) -> dict:
    kind = rng.randrange(5)
    town, day = rng.choice(TOWNS), rng.choice(DAYS)
    if kind == 0:
        what = rng.choice(BUILDS)
        yes = rng.randint(5, 9)
        no = rng.randint(0, yes - 1)
        cost = rng.randint(2, 40)
        year = rng.randint(2026, 2031)
        text = (f"On {day}, the town council of {town} voted {yes} to {no} to build a new {what}. "
                f"The project will cost {cost} million euros and should be finished in {year}. "
                "Work is expected to start next spring.")
        return {"text": text, "summary": f"{town} council approves new {what}"}
    if kind == 1:
        home, away = rng.sample(TEAMS, 2)
        a, b = rng.randint(0, 5), rng.randint(0, 5)
        if a == b:
            a += 1
        win, lose = (home, away) if a > b else (away, home)
        text = (f"The {home} played the {away} in {town} on {day}. The match ended {a} to {b} "
                f"after a tense second half, and the crowd of {rng.randint(2, 40)} thousand cheered until the end.")
        return {"text": text, "summary": f"{win} beat {lose} {max(a, b)}-{min(a, b)}"}
    if kind == 2:
        co = rng.choice(COMPANIES)
        pct = rng.randint(2, 30)
        up = rng.random() < 0.5
        text = (f"{co} said on {day} that its profit {'rose' if up else 'fell'} by {pct} percent in the last quarter. "
                f"The company {'thanked strong demand' if up else 'blamed higher costs'} and "
                f"{'plans to hire more staff' if up else 'will cut spending'} this year.")
        return {"text": text, "summary": f"{co} profit {'up' if up else 'down'} {pct} percent"}
    if kind == 3:
        cause, head = rng.choice(WEATHER)
        hours = rng.randint(2, 12)
        text = (f"{town} woke up to {cause} on {day}. Schools closed early and trains were "
                f"stopped for {hours} hours while crews cleared the tracks. No one was hurt.")
        return {"text": text, "summary": f"{head} stops trains in {town}"}
    n = rng.randint(20, 300)
    item = rng.choice(["trees", "benches", "bicycles", "books", "lamps"])
    text = (f"Volunteers in {town} gave {n} new {item} to the community on {day}. "
            f"The group raised the money at a summer fair and hopes to do more next year.")
    return {"text": text, "summary": f"Volunteers give {n} {item} to {town}"}


# --- files -----------------------------------------------------------------------------------


def rows_of(make, seed: int, n: int = ROWS) -> list[dict]:
    """``n`` distinct rows from ``make``, in the order drawn."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n:
            raise SystemExit(f"{make.__name__}: only {len(out)} distinct rows")
        row = make(rng)
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


FILES = {
    "instruct.jsonl": (instruct_row, 1),
    "ner.jsonl": (ner_row, 2),
    "summarize.jsonl": (summarize_row, 3),
}


def render(make, seed: int) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_of(make, seed)).encode("utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = ap.parse_args(argv)
    bad = 0
    for name, (make, seed) in FILES.items():
        data = render(make, seed)
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                print(f"{name}: differs from what make_examples.py writes", file=sys.stderr)
                bad = 1
            continue
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        print(f"wrote {name}: {len(data)} bytes")
    return bad


if __name__ == "__main__":
    raise SystemExit(main())
