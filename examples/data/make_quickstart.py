#!/usr/bin/env python3
"""Generate the quickstart dataset: order notes -> one strict JSON object.

The task is chosen so that a tiny instruct model (SmolLM2-135M-Instruct)
visibly changes after a few dozen optimizer steps on a CPU: out of the box it
answers in prose or loose JSON; after training it replies with exactly

    {"order_id":4821,"quantity":3,"item":"blue mug","city":"Lisbon","date":"2024-03-02"}

(compact, fixed key order, ISO date, singular item), whatever the phrasing of
the note. Rows are short (about 90 tokens with SmolLM2's chat template, a few
two-order rows about 150) so CPU steps are fast.

Deterministic for a given seed; standard library only. Regenerate with

    python examples/data/make_quickstart.py            # writes next to this file
    python examples/data/make_quickstart.py --seed 7 --train 300 --val 40 --out DIR
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path

SYSTEM = "Extract the order as JSON."
# Rows without a system message carry the instruction in the user turn instead
# (the chat template then inserts its default system prompt).
NO_SYSTEM_PREFIX = "Extract the order as JSON: "
FOLLOW_UP_PREFIXES = ("And this one: ", "Next: ", "Another one: ", "Now this: ")

ITEMS = [
    ("mug", "mugs"), ("notebook", "notebooks"), ("desk lamp", "desk lamps"),
    ("phone case", "phone cases"), ("backpack", "backpacks"), ("water bottle", "water bottles"),
    ("scarf", "scarves"), ("box", "boxes"), ("watch", "watches"), ("candle", "candles"),
    ("teapot", "teapots"), ("umbrella", "umbrellas"), ("pillow", "pillows"),
    ("wallet", "wallets"), ("keyboard", "keyboards"), ("chair", "chairs"),
    ("plant pot", "plant pots"), ("towel", "towels"), ("jacket", "jackets"), ("cap", "caps"),
    ("blanket", "blankets"), ("puzzle", "puzzles"), ("bookshelf", "bookshelves"),
    ("bench", "benches"), ("dress", "dresses"), ("kettle", "kettles"),
]
# Colours and sizes only, so every item/adjective pair reads naturally.
ADJECTIVES = [
    "blue", "red", "green", "black", "white", "grey", "yellow", "orange", "purple",
    "pink", "brown", "small", "large",
]
# Some non-ASCII names on purpose: the pipeline must carry them unchanged.
CITIES = [
    "Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Dublin", "Porto", "Austin", "Denver",
    "Kraków", "São Paulo", "Zürich", "Montréal", "Reykjavík", "Leeds", "Seville", "Hanoi",
    "Perth", "Quito", "Tallinn", "Accra", "Ghent", "Malmö", "Busan", "Tucson", "Bergen",
]
NUMBER_WORDS = ["", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
TEMPLATES = [
    "Order #{id}: {qi} shipped to {city} on {date}.",
    "{qi} for order {id} left our warehouse for {city} on {date}.",
    "On {date} we sent order no. {id} ({qi}) to {city}.",
    "Customer in {city} placed order #{id} on {date}: {qi}.",
    "Please log order {id}: {qi}, delivery to {city}, dated {date}.",
    "{city} delivery, {date}: order number {id}, {qi}.",
    "Shipped {date}: {qi} to {city}. Ref #{id}.",
    "Hi, my order #{id} of {qi} should arrive in {city}; I placed it {date}.",
    "Invoice for order {id}: {qi}, ship-to {city}, {date}.",
    "We received {qi} in {city} on {date} (order #{id}).",
]
FIRST_DAY = dt.date(2023, 1, 1)
DAYS = (dt.date(2025, 12, 31) - FIRST_DAY).days


def spoken_date(day: dt.date, rng: random.Random) -> str:
    """The same day in one of several common English spellings."""
    month = MONTHS[day.month - 1]
    return rng.choice([
        day.isoformat(),
        f"{month} {day.day}, {day.year}",
        f"{day.day} {month} {day.year}",
        f"{month[:3]} {day.day}, {day.year}",
        f"{day.day} {month[:3]} {day.year}",
    ])


def spoken_quantity(quantity: int, item: str, plural: str, rng: random.Random) -> str:
    """'3 blue mugs', 'three blue mugs', 'a blue mug', 'an orange cap'."""
    if quantity == 1:
        article = "an" if item[0] in "aeiou" else "a"
        return f"{rng.choice([article, 'one', '1'])} {item}"
    count = NUMBER_WORDS[quantity] if rng.random() < 0.35 else str(quantity)
    return f"{count} {plural}"


def make_order(rng: random.Random) -> tuple[str, str]:
    """One order note and the exact JSON answer for it."""
    singular, plural = rng.choice(ITEMS)
    adjective = rng.choice(ADJECTIVES)
    quantity = rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12])
    order_id = rng.randint(1000, 9999)
    city = rng.choice(CITIES)
    day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS + 1))
    item = f"{adjective} {singular}"
    note = rng.choice(TEMPLATES).format(
        id=order_id,
        qi=spoken_quantity(quantity, item, f"{adjective} {plural}", rng),
        city=city,
        date=spoken_date(day, rng),
    )
    answer = {"order_id": order_id, "quantity": quantity, "item": item,
              "city": city, "date": day.isoformat()}
    # Compact separators: fewer tokens per row, and a format the untrained
    # model does not produce by itself, so the effect of training is visible.
    return note[0].upper() + note[1:], json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def make_row(rng: random.Random) -> dict:
    """A conversation: usually system + one order, sometimes two turns or no system."""
    shape = rng.random()
    note, answer = make_order(rng)
    if shape < 0.08:
        return {"messages": [{"role": "user", "content": NO_SYSTEM_PREFIX + note},
                             {"role": "assistant", "content": answer}]}
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": note},
                {"role": "assistant", "content": answer}]
    if shape > 0.90:
        second_note, second_answer = make_order(rng)
        messages += [{"role": "user", "content": rng.choice(FOLLOW_UP_PREFIXES) + second_note},
                     {"role": "assistant", "content": second_answer}]
    return {"messages": messages}


def generate(seed: int, n_train: int, n_val: int) -> tuple[list[dict], list[dict]]:
    """Train and validation rows; no user note appears twice across both."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_val:
        row = make_row(rng)
        notes = [m["content"] for m in row["messages"] if m["role"] == "user"]
        if any(note in seen for note in notes):
            continue
        seen.update(notes)
        rows.append(row)
    return rows[:n_train], rows[n_train:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--train", type=int, default=300, help="training rows (default 300)")
    parser.add_argument("--val", type=int, default=40, help="validation rows (default 40)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: this script's directory)")
    args = parser.parse_args()
    train, val = generate(args.seed, args.train, args.val)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "quickstart-train.jsonl", train)
    write_jsonl(args.out / "quickstart-val.jsonl", val)
    print(f"wrote {len(train)} training and {len(val)} validation rows to {args.out}")


if __name__ == "__main__":
    main()
