"""Containment decontamination throughput: pairs/s against N benchmark texts.

Synthetic benchmark questions (8-60 words over a 20k-word vocabulary, word frequencies
falling off as in text) and question/answer pairs (a 20-60 word question, a 100-300 word
answer); a share of the pairs holds a benchmark question, in another case and punctuation.
For each N: the time to index N benchmark texts, then the pairs scanned per second (both
sides, as decontamination scans them) by the anchored index (generators/cleaning.py
ContainmentIndex), by the n-gram index beside it, and by a plain substring search of
every benchmark text in each pair (on a sample of pairs, as it is slow). The index's hits
must equal the plain search's on that sample. Prints a table and a final JSON line.

    python bench/decontamination.py --benchmarks 1000,10000,100000 --pairs 10000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import MemoryWatch  # noqa: E402
from generators.cleaning import ContainmentIndex, NgramIndex, normalize  # noqa: E402

VOCABULARY = 20_000


def sentence(
    rng: random.Random, vocab: list[str], weights: list[float], low: int, high: int
) -> str:
    return " ".join(rng.choices(vocab, weights, k=rng.randint(low, high)))


def build(n_bench: int, n_pairs: int, seed: int) -> tuple[list[str], list[tuple[str, str]], int]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(VOCABULARY)]
    weights = [1 / (i + 1) for i in range(VOCABULARY)]
    benchmarks = [sentence(rng, vocab, weights, 8, 60) for _ in range(n_bench)]
    pairs: list[tuple[str, str]] = []
    planted = 0
    for _ in range(n_pairs):
        question = sentence(rng, vocab, weights, 20, 60)
        answer = sentence(rng, vocab, weights, 100, 300)
        if rng.random() < 0.02:
            planted += 1
            text = rng.choice(benchmarks).upper().replace(" ", ", ", 1) + "?"
            if rng.random() < 0.5:
                question = f"{question} {text}"
            else:
                answer = f"{text} {answer}"
        pairs.append((question, answer))
    return benchmarks, pairs, planted


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run(n_bench: int, n_pairs: int, naive_pairs: int, seed: int) -> dict[str, Any]:
    benchmarks, pairs, planted = build(n_bench, n_pairs, seed)
    index = ContainmentIndex(min_words=5)

    def index_all() -> None:
        for n, text in enumerate(benchmarks):
            index.add(text, f"b{n}:test")
        index.hits("")  # anchors are chosen at the first scan

    build_s, _ = timed(index_all)

    def scan() -> int:
        return sum(bool(index.hits(q) or index.hits(a)) for q, a in pairs)

    scan_s, found = timed(scan)
    grams = NgramIndex(13)
    ngram_build_s, _ = timed(lambda: [grams.add(t, "b:test") for t in benchmarks])
    ngram_s, _ = timed(lambda: [grams.hits(q) or grams.hits(a) for q, a in pairs])
    sample = pairs[:naive_pairs]
    normalised = [f" {normalize(b)} " for b in benchmarks]

    def naive() -> list[set[str]]:
        out = []
        for q, a in sample:
            q, a = f" {normalize(q)} ", f" {normalize(a)} "
            out.append({f"b{n}:test" for n, b in enumerate(normalised) if b in q or b in a})
        return out

    naive_s, expected = timed(naive)
    got = [index.hits(q) | index.hits(a) for q, a in sample]
    return {
        "benchmark_texts": n_bench,
        "pairs": n_pairs,
        "planted": planted,
        "found": found,
        "index_s": round(build_s, 3),
        "containment_pairs_per_s": round(n_pairs / scan_s),
        "ngram_index_s": round(ngram_build_s, 3),
        "ngram_pairs_per_s": round(n_pairs / ngram_s),
        "naive_pairs_per_s": round(len(sample) / naive_s, 1),
        "naive_sample": len(sample),
        "agrees_with_naive": got == expected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default="1000,10000,100000", help="Ns, comma-separated")
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--naive-pairs", type=int, default=100, help="pairs the plain search scans")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with MemoryWatch() as watch:
        rows = [
            run(int(n), args.pairs, args.naive_pairs, args.seed) for n in args.benchmarks.split(",")
        ]
    memory = watch.figures()
    print(f"{'measure':<28}" + "".join(f"{r['benchmark_texts']:>14,}" for r in rows))
    for key in (
        "pairs",
        "planted",
        "found",
        "index_s",
        "containment_pairs_per_s",
        "ngram_index_s",
        "ngram_pairs_per_s",
        "naive_pairs_per_s",
        "agrees_with_naive",
    ):
        print(f"{key:<28}" + "".join(f"{r[key]!s:>14}" for r in rows))
    for key, value in memory.items():
        print(f"{key:<28}{value:>14,.1f}")
    result: dict[str, Any] = {"bench": "decontamination", "runs": rows, **memory}
    for r in rows:
        n = r["benchmark_texts"]
        result[f"at_{n}_containment_pairs_per_s"] = r["containment_pairs_per_s"]
        result[f"at_{n}_naive_pairs_per_s"] = r["naive_pairs_per_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
