"""Geo core throughput: batch reverse geocoding and haversine, ours against common alternatives.

Targets on a 2-core machine: reverse geocoding >= 500k points/s, haversine >= 5M pairs/s.
Input: real MP-16 coordinates (the shared 100k GeoCLIP gallery), tiled to --points.

    python benchmarks/bench_geo.py [--coords FILE] [--points 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
from _common import DEFAULT_COORDS, best_of, row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coords", default=str(DEFAULT_COORDS), help="CSV with LAT, LON columns")
    ap.add_argument("--points", type=int, default=1_000_000, help="points per timed batch")
    args = ap.parse_args()

    from geopy.distance import great_circle

    from mp16_reason.distance import haversine_km
    from mp16_reason.gazetteer import Gazetteer

    coords = pd.read_csv(args.coords)[["LAT", "LON"]].to_numpy(dtype=np.float64)
    reps = -(-args.points // len(coords))
    pts = np.tile(coords, (reps, 1))[: args.points]
    lat, lon = pts[:, 0].copy(), pts[:, 1].copy()
    print(f"{len(coords):,} MP-16 coordinates tiled to {len(pts):,} points; {os.cpu_count()} CPUs")

    gaz = Gazetteer()
    gaz.reverse_batch(lat[:1000], lon[:1000])  # warm-up
    ours = best_of(lambda: gaz.reverse_batch(lat, lon), repeat=3)
    print("\nreverse geocoding (country, admin1, city, GeoNames id, distances)")
    print(row("mp16_reason Gazetteer.reverse_batch", len(pts), ours))
    anchors = []
    n_anchor = min(len(pts), 200_000)
    try:
        import reverse_geocoder as rg

        with contextlib.redirect_stdout(io.StringIO()):  # it prints while loading
            rg.search([(0.0, 0.0)], mode=2)
            sec = best_of(lambda: rg.search(list(zip(lat[:n_anchor], lon[:n_anchor])), mode=2), repeat=3)
        anchors.append(("reverse_geocoder.search (mode 2)", n_anchor, sec))
    except ImportError:
        print("  (reverse_geocoder not installed: pip install reverse_geocoder)")
    import reverse_geocode

    pairs = list(zip(lat[:n_anchor], lon[:n_anchor]))
    reverse_geocode.search(pairs[:10])
    anchors.append(("reverse_geocode.search", n_anchor, best_of(lambda: reverse_geocode.search(pairs), repeat=3)))
    for label, n, sec in anchors:
        print(row(label, n, sec))
    for label, n, sec in anchors:
        print(f"  ratio ours / {label}: {(len(pts) / ours) / (n / sec):.2f}x")

    print("\ngreat-circle distance")
    lat2, lon2 = np.roll(lat, 1), np.roll(lon, 1)
    h = best_of(lambda: haversine_km(lat, lon, lat2, lon2))
    n_gp = 100_000
    gp = best_of(
        lambda: [
            great_circle((a, b), (c, d)).km for a, b, c, d in zip(lat[:n_gp], lon[:n_gp], lat2[:n_gp], lon2[:n_gp])
        ],
        repeat=2,
    )
    print(row("mp16_reason haversine_km (numpy)", len(pts), h))
    print(row("geopy great_circle (per pair)", n_gp, gp))
    print(f"  ratio ours / geopy: {(len(pts) / h) / (n_gp / gp):.1f}x")
    print(
        f"\nSUMMARY reverse {len(pts) / ours:,.0f} points/s (target 500,000); "
        f"haversine {len(pts) / h:,.0f} pairs/s (target 5,000,000)"
    )


if __name__ == "__main__":
    main()
