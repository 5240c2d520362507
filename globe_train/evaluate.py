"""`globe eval`: predict (or read predictions), score offline, report the standard geo-localization table.

- Predictions are appended to ``predictions.jsonl`` as they arrive (one line per item, flushed), so an
  interrupted run resumes where it stopped and never asks twice for a finished item.
- Each answer becomes a coordinate: explicit ``lat``/``lon`` when the model gives them, else the offline
  forward geocoder on (city, country); a country alone gives its capital. No answer, no coordinate: a miss.
- Metrics: accuracy within 1/25/200/750/2500 km (distance <= threshold), median error, GeoScore, country and
  city accuracy under the official and the alias rule, the share of unparseable answers and of failed
  requests, bootstrap 95 % intervals, and a per-continent breakdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mp16_reason.answer import answer_location, official_eval_extract, parse_answer
from mp16_reason.distance import THRESHOLDS_KM, haversine_km
from mp16_reason.matching import city_match, country_match, official_match

from .benchmarks import Benchmark, EvalItem

PREDICTIONS = "predictions.jsonl"


def public_name(name: str) -> str:
    """A model's name as a report (and the card made from it) may show it: a local folder by its name."""
    from .runs import public

    return " @ ".join(public(part) for part in name.split(" @ "))


GEOSCORE_SCALE_KM = 1492.7


# -- predicting -----------------------------------------------------------------------------------------
def _done_ids(path: Path) -> set[str]:
    """Ids already answered. A torn last line (a crash mid-write) is cut off so the file stays valid JSONL."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    return {json.loads(line)["id"] for line in data.decode().splitlines() if line.strip()}


def predict(items: list[EvalItem], predictor, out_dir: str | Path, progress: bool = True) -> Path:
    """Ask ``predictor`` about every item not yet in ``out_dir/predictions.jsonl``; returns that file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / PREDICTIONS
    done = _done_ids(path)
    todo = [i for i in items if i.id not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="img", desc="predict", disable=not progress)
    with path.open("a", encoding="utf-8") as fh:

        def write(item: EvalItem, text: str, error: str, seconds: float) -> None:
            line = {"id": item.id, "text": text, "error": error, "model": predictor.name, "seconds": round(seconds, 3)}
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(1)

        ask_all(todo, predictor, write)
    bar.close()
    return path


def ask_all(items: list[EvalItem], predictor, on_answer) -> None:
    """Ask ``predictor`` about each item, calling ``on_answer(item, text, error, seconds)`` as answers arrive:
    concurrently for endpoint predictors, one by one for local models and files."""
    if hasattr(predictor, "apredict"):
        asyncio.run(_predict_async(items, predictor, on_answer))
        return
    for item in items:
        t0 = time.perf_counter()
        text, error = predictor.predict(item)
        on_answer(item, text, error, time.perf_counter() - t0)


async def _predict_async(items: list[EvalItem], predictor, write) -> None:
    """``concurrency`` workers share one iterator: each item is taken once, and no more requests are in
    flight (or tasks alive) than the cap, however long the benchmark."""
    todo = iter(items)

    async def worker() -> None:
        for item in todo:
            t0 = time.perf_counter()
            text, error = await predictor.apredict(item)
            write(item, text, error, time.perf_counter() - t0)  # in arrival order

    await asyncio.gather(*(worker() for _ in range(max(1, predictor.concurrency))))


def read_predictions(path: str | Path) -> dict[str, dict]:
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = row
    return out


# -- scoring --------------------------------------------------------------------------------------------
def score(items: Iterable[EvalItem], predictions: dict[str, dict]) -> pd.DataFrame:
    """One row per item: parsed answer, coordinate and how it was obtained, distance, name matches."""
    rows = []
    for item in items:
        pred = predictions.get(item.id)
        text = (pred or {}).get("text", "") or ""
        error = (pred or {}).get("error", "") if pred else "no prediction"
        ans = parse_answer(text)
        lat, lon, source = answer_location(ans) or (None, None, "")
        off_country, off_city = official_eval_extract(text)
        rows.append(
            {
                "id": item.id,
                "continent": item.continent or "(none)",
                "true_lat": item.lat,
                "true_lon": item.lon,
                "true_country": item.country,
                "true_city": item.city,
                "pred_country": ans.country,
                "pred_city": ans.city,
                "pred_lat": lat,
                "pred_lon": lon,
                "coordinate_source": source,
                "parsed": ans.parsed,
                "error": error,
                "country_official": official_match(off_country, item.country) if item.country else False,
                "city_official": official_match(off_city, item.city) if item.city else False,
                "country_alias": country_match(ans.country, item.country),
                "city_alias": city_match(ans.city, item.city, item.country) if item.city else False,
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    resolved = df["pred_lat"].notna()
    df["distance_km"] = np.nan
    df.loc[resolved, "distance_km"] = haversine_km(
        df.loc[resolved, "true_lat"].to_numpy(float),
        df.loc[resolved, "true_lon"].to_numpy(float),
        df.loc[resolved, "pred_lat"].to_numpy(float),
        df.loc[resolved, "pred_lon"].to_numpy(float),
    )
    return df


def _per_item(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each metric as a per-item array whose mean is the metric (what the bootstrap resamples)."""
    d = df["distance_km"].to_numpy(float)
    found = np.isfinite(d)
    cols = {f"acc_{t:g}km": np.where(found, d <= t, False).astype(float) for t in THRESHOLDS_KM}
    cols["geoscore"] = np.where(found, 5000.0 * np.exp(-np.where(found, d, 0.0) / GEOSCORE_SCALE_KM), 0.0)
    for name in ("country_official", "city_official", "country_alias", "city_alias"):
        cols[name] = df[name].to_numpy(bool).astype(float)
    cols["unparseable"] = (~df["parsed"].to_numpy(bool)).astype(float)
    cols["failed"] = (df["error"].astype(str) != "").to_numpy(float)
    return cols


def _median_km(d: np.ndarray) -> float | None:
    """Median error with misses counted as infinitely far; None when more than half are misses."""
    d = np.where(np.isfinite(d), d, np.inf)
    m = float(np.median(d)) if len(d) else float("inf")
    return round(m, 3) if np.isfinite(m) else None


def metrics(df: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> dict:
    """The report: point estimates, bootstrap 95 % intervals, and the per-continent breakdown."""
    n = len(df)
    if n == 0:
        return {"n": 0}
    cols = _per_item(df)
    report: dict = {"n": n}
    report["metrics"] = {k: round(float(v.mean()) * (1 if k == "geoscore" else 100), 4) for k, v in cols.items()}
    d = df["distance_km"].to_numpy(float)
    report["metrics"]["median_km"] = _median_km(d)
    if bootstrap:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(bootstrap, n))
        ci = {}
        for k, v in cols.items():
            means = v[idx].mean(axis=1) * (1 if k == "geoscore" else 100)
            ci[k] = [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]
        far = 1e12  # stands for "a miss" so that percentiles never subtract infinities
        medians = np.median(np.where(np.isfinite(d), d, far)[idx], axis=1)
        ci["median_km"] = [round(float(v), 3) if v < far else None for v in np.percentile(medians, [2.5, 97.5])]
        report["ci95"] = ci
        report["bootstrap"] = {"resamples": bootstrap, "seed": seed}
    report["coordinate_source"] = df["coordinate_source"].replace("", "none").value_counts().to_dict()
    per = {}
    for continent, part in df.groupby("continent"):
        c = _per_item(part)
        per[continent] = {"n": len(part), **{k: round(float(c[k].mean()) * 100, 2) for k in c if k.startswith("acc_")}}
        per[continent]["country_alias"] = round(float(c["country_alias"].mean()) * 100, 2)
        per[continent]["median_km"] = _median_km(part["distance_km"].to_numpy(float))
    report["per_continent"] = per
    return report


def table(report: dict, title: str = "") -> str:
    """The report as the paper's table plus the name accuracies, for a terminal; with an overlap excluded, the
    same table again without those items."""
    text = _table(report, title)
    clean = report.get("excluding_overlap")
    if clean is not None and clean.get("n"):
        head = (
            f"without the {clean['excluded']:,} items the training set already holds "
            f"({', '.join(clean['kinds'])}, from the audit of {clean['audit']})"
        )
        text += "\n" + _table(clean, head)
    elif clean is not None:
        text += f"\nevery item is one the training set already holds ({clean['excluded']:,})"
    return text


def _table(report: dict, title: str = "") -> str:
    m, ci = report["metrics"], report.get("ci95", {})

    def cell(key: str, unit: str = "%") -> str:
        lo, hi = ci.get(key, [None, None])
        span = f" [{lo:.1f}, {hi:.1f}]" if lo is not None and hi is not None else ""
        value = m[key]
        return "n/a" if value is None else f"{value:.2f}{unit}{span}"

    lines = [title or "evaluation", f"  items: {report['n']:,}"]
    for t in THRESHOLDS_KM:
        lines.append(f"  within {t:>6g} km   {cell(f'acc_{t:g}km')}")
    lines += [
        f"  median error     {cell('median_km', ' km')}",
        f"  GeoScore         {cell('geoscore', '')}",
        f"  country (alias)  {cell('country_alias')}     official {cell('country_official')}",
        f"  city (alias)     {cell('city_alias')}     official {cell('city_official')}",
        f"  unparseable      {cell('unparseable')}     failed requests {cell('failed')}",
        "  per continent:    n    25km   200km  2500km  country  median km",
    ]
    for name, p in sorted(report["per_continent"].items(), key=lambda kv: -kv[1]["n"]):
        med = "n/a" if p["median_km"] is None else f"{p['median_km']:.0f}"
        lines.append(
            f"    {name:<14}{p['n']:>5} {p['acc_25km']:>7.1f} {p['acc_200km']:>7.1f} {p['acc_2500km']:>7.1f}"
            f" {p['country_alias']:>8.1f}  {med:>9}"
        )
    return "\n".join(lines)


ERROR_COLOURS = [
    (25, (46, 204, 113)),
    (200, (241, 196, 15)),
    (750, (230, 126, 34)),
    (2500, (231, 76, 60)),
    (float("inf"), (155, 89, 182)),
]


def great_circle(lat1: float, lon1: float, lat2: float, lon2: float, steps: int = 64) -> list[list[tuple]]:
    """Points along the shorter great-circle arc, split where it crosses the date line (±180°): the pieces a
    flat map draws, so a Los Angeles-to-Sydney miss goes across the Pacific, not across the whole map."""
    a, b = (np.radians([lat1, lon1]), np.radians([lat2, lon2]))
    p = np.array([np.cos(a[0]) * np.cos(a[1]), np.cos(a[0]) * np.sin(a[1]), np.sin(a[0])])
    q = np.array([np.cos(b[0]) * np.cos(b[1]), np.cos(b[0]) * np.sin(b[1]), np.sin(b[0])])
    omega = np.arccos(np.clip(p @ q, -1.0, 1.0))
    t = np.linspace(0.0, 1.0, steps)[:, None]
    pts = p * (1 - t) + q * t if omega < 1e-9 else (np.sin((1 - t) * omega) * p + np.sin(t * omega) * q) / np.sin(omega)
    lats = np.degrees(np.arcsin(np.clip(pts[:, 2] / np.linalg.norm(pts, axis=1), -1, 1)))
    lons = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    pieces, piece = [], [(lats[0], lons[0])]
    for la, lo in zip(lats[1:], lons[1:]):
        if abs(lo - piece[-1][1]) > 180:  # wrapped: end this piece at the edge, start the next at the other
            edge = 180.0 if piece[-1][1] > 0 else -180.0
            piece.append((la, edge))
            pieces.append(piece)
            piece = [(la, -edge)]
        piece.append((la, lo))
    pieces.append(piece)
    return pieces


def error_map(df: pd.DataFrame, path: str | Path, width: int = 1200) -> Path:
    """Truth in white, a great-circle line to each prediction coloured by its error (green < 25 km ... red >
    2500 km), and a legend."""
    from PIL import ImageDraw

    from mp16_reason.worldmap import base_map

    img, xy = base_map(width)
    draw = ImageDraw.Draw(img)
    for row in df.itertuples():
        tx, ty = xy(row.true_lat, row.true_lon)
        if np.isfinite(row.distance_km):
            colour = next(c for limit, c in ERROR_COLOURS if row.distance_km <= limit)
            for piece in great_circle(row.true_lat, row.true_lon, row.pred_lat, row.pred_lon):
                draw.line([xy(la, lo) for la, lo in piece], fill=colour, width=1)
        draw.point((tx, ty), fill=(255, 255, 255))
    _legend(draw, img.height)
    path = Path(path)
    img.save(path, optimize=True)
    return path


def _legend(draw, height: int) -> None:
    labels = ["up to 25 km", "up to 200 km", "up to 750 km", "up to 2,500 km", "over 2,500 km"]
    rows = [("truth", (255, 255, 255))] + [(f"error {label}", c) for label, (_, c) in zip(labels, ERROR_COLOURS)]
    top = height - 14 * len(rows) - 12
    draw.rectangle([6, top - 4, 150, height - 6], fill=(20, 24, 32), outline=(90, 90, 90))
    for i, (text, colour) in enumerate(rows):
        y = top + 14 * i
        draw.line([12, y + 6, 30, y + 6], fill=colour, width=3)
        draw.text((36, y), text, fill=(230, 230, 230))


LEAK_KINDS = ("exact", "near", "same-photo")  # what makes a benchmark item one the training set already holds


def overlapping_ids(audit: str | Path, benchmark: str) -> tuple[set[str], dict]:
    """The ids of ``benchmark`` that an audit of the training build (``mp16-reason audit BUILD --against
    NAME=...``: its ``audit.json``, or the build folder holding it) paired with a training photo, and where
    they come from. ``benchmark`` is the name the audit gave the set."""
    path = Path(audit)
    if path.is_dir():
        path = path / "audit.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no audit there; run `mp16-reason audit BUILD --against {benchmark}=...`")
    raw = path.read_bytes()
    doc = json.loads(raw)
    summary = doc.get("summary", {})
    names = summary.get("against", [])
    if benchmark not in names:
        raise ValueError(
            f"{path} audits {summary.get('build', 'a build')} against {', '.join(names) or 'no other set'}, not "
            f"{benchmark!r}: name the set as the audit did (--overlap-name), or audit against it first"
        )
    leaks = [p for p in doc["pairs"] if p["where"] == f"train-{benchmark}" and p["kind"] in LEAK_KINDS]
    source = {
        "audit": summary.get("build", ""),
        "audit_sha256": hashlib.sha256(raw).hexdigest(),
        "set": benchmark,
        "kinds": list(LEAK_KINDS),
        "pairs": len(leaks),
        "thresholds": summary.get("thresholds", {}),
    }
    return {p["b"] for p in leaks}, source


def _names(ident: str) -> set[str]:
    """The names one image goes by: as given and as a file name (a folder or tar member may sit in a
    sub-folder the benchmark's list does not name), each with and without its .jpg suffix."""
    base = PurePosixPath(ident.replace("\\", "/")).name
    return {n.removesuffix(".jpg").removesuffix(".JPG") for n in (ident, base)} | {ident, base}


def overlapping_items(items: list[EvalItem], ids: set[str]) -> set[str]:
    """The ids of the items an audit named: by id, or by image file name (a folder, tar or CSV side records
    what it read, which may be the file rather than the list's id)."""
    audited = set().union(*map(_names, ids)) if ids else set()
    hit = set()
    for item in items:
        names = _names(item.id) | (_names(Path(item.image).name) if isinstance(item.image, str) else set())
        if names & audited:
            hit.add(item.id)
    return hit


def evaluate(
    bench: Benchmark,
    predictor,
    out_dir: str | Path,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    exclude: tuple[set[str], dict] | None = None,
) -> dict:
    """Predict what is missing, score everything, and write ``metrics.json``, ``scores.csv`` and ``error_map.png``."""
    out = Path(out_dir)
    answers = getattr(predictor, "answers", None)
    if answers is not None and not any(i.id in answers or i.id.removesuffix(".jpg") in answers for i in bench.items):
        sample = ", ".join(predictor.ids[:3])
        raise ValueError(
            f"{predictor.path}: none of its {len(predictor.ids):,} ids is an id of {bench.name} (its ids look like "
            f"{sample}; the benchmark's like {', '.join(i.id for i in bench.items[:3])}): is it for this benchmark?"
        )
    path = predict(bench.items, predictor, out, progress=progress)
    df = score(bench.items, read_predictions(path))
    report = {"benchmark": bench.name, "model": public_name(predictor.name), "skipped_rows": bench.skipped}
    if bench.source:
        report["dataset"] = bench.source
    if getattr(predictor, "protocol", None) is not None:
        report["protocol"] = predictor.protocol.record()
    report.update(metrics(df, bootstrap=bootstrap, seed=seed))
    if exclude is not None:
        ids, source = exclude
        overlap = df["id"].isin(overlapping_items(bench.items, ids))
        df["overlap"] = overlap
        clean = metrics(df[~overlap].reset_index(drop=True), bootstrap=bootstrap, seed=seed)
        report["excluding_overlap"] = {**source, "excluded": int(overlap.sum()), **clean}
    df.to_csv(out / "scores.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if len(df):
        error_map(df, out / "error_map.png")
    return report
