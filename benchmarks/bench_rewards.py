"""Reward throughput: geo_accuracy + visual_grounding + format over many completions (goal >= 50k/s).

python benchmarks/bench_rewards.py [--n 100000]
"""

from __future__ import annotations

import argparse
import random
import time

from globe_train.rewards import format_reward, geo_accuracy, visual_grounding

ANSWERS = [
    ("United Kingdom", "London"),
    ("UK", "London"),
    ("France", "Paris"),
    ("USA", "NYC"),
    ("Japan", "Kyoto"),
    ("Germany", "München"),
    ("Brazil", "Rio de Janeiro"),
    ("", ""),
    ("Spain", "unknown"),
    ("Italy", "Roma"),
]
TRUTH = [("United Kingdom", "London"), ("France", "Paris"), ("United States", "New York City"), ("Japan", "Tokyo")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    rnd = random.Random(0)
    completions, countries, cities, entities = [], [], [], []
    for _ in range(args.n):
        c, t = rnd.choice(ANSWERS)
        think = "The signs, a red double-decker bus and stone terraces suggest a large European city. " * 3
        completions.append(
            [{"role": "assistant", "content": f"<think>{think}</think><answer>country: {c}\ncity: {t}</answer>"}]
        )
        tc, tt = rnd.choice(TRUTH)
        countries.append(tc)
        cities.append(tt)
        entities.append([{"text": "red double-decker bus"}, {"text": "stone terraces"}, {"text": "palm tree"}])
    geo_accuracy(completions[:1000], country=countries[:1000], city=cities[:1000])  # warm the name tables
    t0 = time.perf_counter()
    geo = geo_accuracy(completions, country=countries, city=cities)
    t1 = time.perf_counter()
    vis = visual_grounding(completions, entities=entities)
    t2 = time.perf_counter()
    fmt = format_reward(completions)
    t3 = time.perf_counter()
    total = t3 - t0
    print(f"\n{args.n:,} completions (~330 characters each)")
    for name, seconds in (("geo_accuracy", t1 - t0), ("visual_grounding", t2 - t1), ("format", t3 - t2)):
        print(f"  {name:<18} {args.n / seconds:12,.0f} completions/s")
    print(f"  all three          {args.n / total:12,.0f} completions/s  (goal >= 50,000/s)")
    assert len(geo) == len(vis) == len(fmt) == args.n


if __name__ == "__main__":
    main()
