"""Held-apart accuracy of FAST classify's scoring constants, from the evidence of every rule
against every labelled corpus document.

The evidence comes from the in-process loop, with a model or without:

    EVIDENCE=var/evidence.jsonl cargo run --release -p docfleet-worker --example classify_corpus -- ../shared var/models/<name>
    python3 deploy/local/classify_cv.py var/evidence.jsonl [more.jsonl…]

For each scoring form it prints the accuracy of the constants that fit the whole set best
(what a grid over the corpus would report) and the accuracy of 5-fold cross-validation
repeated 10 times, where the constants are chosen on four fifths and judged on the fifth:
the figure to expect on documents the constants were not chosen on. The forms:

- `absolute` (the worker's): mean cosine of the opening and outline passages plus
  `w` × the lexical share; the catch-all scores a fixed `c`.
- `standardised`: the cosines and lexical shares as z-scores across the document's specific
  rules (`c` in standard deviations), which needs no knowledge of a model's cosine range.
"""

import json
import random
import statistics
import sys

GRIDS = {
    "absolute": ([0, 0.25, 0.5, 0.75, 1, 1.5, 2], [0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 1.0, 1.1]),
    "standardised": ([0, 0.25, 0.5, 0.75, 1, 1.5], [0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5]),
}


def load(path):
    with open(path) as f:
        return [d for d in map(json.loads, f) if d["evidence"]]


def z(values):
    mean, sd = statistics.mean(values), statistics.pstdev(values) or 1e-9
    return [(v - mean) / sd for v in values]


def predict(doc, form, w, c):
    rules = doc["evidence"]["rules"]
    specific = [r for r in rules if not r["catch_all"]]
    sims = [sum(r["similarity"]) / 2 if r["similarity"] else 0.0 for r in specific]
    lexical = [r["lexical"] for r in specific]
    if form == "standardised":
        sims, lexical = z(sims), z(lexical)
    scores = {r["kind"]: s + w * l for r, s, l in zip(specific, sims, lexical)}
    scores.update({r["kind"]: c for r in rules if r["catch_all"]})
    return max(scores, key=scores.get)


def accuracy(docs, form, w, c):
    return sum(predict(d, form, w, c) == d["label"] for d in docs) / len(docs)


def fit(docs, form):
    weights, levels = GRIDS[form]
    # Ties go to the lexical weight nearest 0.5, then to the lower catch-all level.
    return max(((accuracy(docs, form, w, c), -abs(w - 0.5), -c, w, c) for w in weights for c in levels))[3:]


def held_apart(docs, form, repeats=10, folds=5):
    results = []
    for seed in range(repeats):
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        right = 0
        for k in range(folds):
            held = set(order[k::folds])
            w, c = fit([d for i, d in enumerate(docs) if i not in held], form)
            right += sum(predict(docs[i], form, w, c) == docs[i]["label"] for i in held)
        results.append(right / len(docs))
    return statistics.mean(results), min(results), max(results)


for path in sys.argv[1:]:
    docs = load(path)
    for form in GRIDS:
        w, c = fit(docs, form)
        mean, low, high = held_apart(docs, form)
        print(
            f"{path}: {form:<12} {len(docs)} documents; whole set: w={w} c={c} accuracy {accuracy(docs, form, w, c):.3f}; "
            f"held apart: {mean:.3f} ({low:.3f}–{high:.3f})"
        )
