"""`globe eval`: answer parsing, every metric on hand-computed cases, predictions files (ours and the released
evaluation's CSV), resume, and a real OpenAI-compatible server with injected faults."""

from __future__ import annotations

import csv
import http.server
import json
import math
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import sample_recipe
from PIL import Image

from globe_train.benchmarks import EvalItem, load_benchmark
from globe_train.cli import main
from globe_train.evaluate import metrics, predict, read_predictions, score
from globe_train.predictors import EndpointPredictor, FilePredictor
from mp16_reason.answer import official_eval_extract, parse_answer

KM_PER_DEGREE = math.pi / 180 * 6371.0088  # a degree of latitude on the sphere haversine_km uses
PARIS = (48.8566, 2.3522)


# -- answers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "country", "city", "coords", "tagged"),
    [
        ("<think>French signs</think><answer>country: France\ncity: Paris</answer>", "France", "Paris", None, True),
        ("<answer>Country: **Japan**\nCity: Kyoto.</answer>", "Japan", "Kyoto", None, True),
        ("country: Peru\ncity: [city name]", "Peru", "", None, False),  # placeholder is no answer
        (
            "<answer>country: Chile\ncity: Santiago\nlat: -33.45\nlon: -70.66</answer>",
            "Chile",
            "Santiago",
            (-33.45, -70.66),
            True,
        ),
        ("<answer>coordinates: 40.4168, -3.7038</answer>", "", "", (40.4168, -3.7038), True),
        ("<answer>country: Spain\nlat: 95\nlon: 3</answer>", "Spain", "", None, True),  # impossible latitude
        ("I cannot tell.", "", "", None, False),
        ("", "", "", None, False),
    ],
)
def test_parse_answer(text, country, city, coords, tagged):
    ans = parse_answer(text)
    assert (ans.country, ans.city, ans.tagged) == (country, city, tagged)
    assert (None if ans.lat is None else (ans.lat, ans.lon)) == coords
    assert ans.parsed == bool(country or city or coords)


def test_official_eval_extract_follows_the_released_rule():
    assert official_eval_extract("<answer>country: France\ncity: Paris</answer>") == ("france", "paris")
    assert official_eval_extract("country: USA\ncity: NYC") == ("usa", "nyc")  # no tag: the whole text
    assert official_eval_extract("Country: France") == ("", "")  # labels are case-sensitive there
    assert official_eval_extract(None) == ("", "")


# -- metrics on hand-computed cases ---------------------------------------------------------------------
def _item(i: int, lat=PARIS[0], lon=PARIS[1], country="France", city="Paris", continent="Europe") -> EvalItem:
    return EvalItem(id=f"img{i}", lat=lat, lon=lon, image=b"", country=country, city=city, continent=continent)


def _answer(lat: float, lon: float) -> str:
    return f"<answer>country: France\ncity: Paris\nlat: {lat}\nlon: {lon}</answer>"


def test_distance_metrics_by_hand():
    offsets = [0.0, 0.1, 1.0, 5.0, 20.0]  # degrees north of the truth: 0, 11.1, 111.2, 556.0, 2223.9 km
    items = [_item(i) for i in range(6)]
    preds = {f"img{i}": {"text": _answer(PARIS[0] + o, PARIS[1]), "error": ""} for i, o in enumerate(offsets)}
    preds["img5"] = {"text": "no idea", "error": ""}
    df = score(items, preds)
    expected_km = [o * KM_PER_DEGREE for o in offsets]
    assert df["distance_km"].iloc[:5].tolist() == pytest.approx(expected_km, abs=1e-6)
    assert math.isnan(df["distance_km"].iloc[5])
    m = metrics(df, bootstrap=0)["metrics"]
    assert m["acc_1km"] == pytest.approx(100 / 6, abs=1e-3)
    assert m["acc_25km"] == pytest.approx(200 / 6, abs=1e-3)
    assert m["acc_200km"] == pytest.approx(300 / 6, abs=1e-3)
    assert m["acc_750km"] == pytest.approx(400 / 6, abs=1e-3)
    assert m["acc_2500km"] == pytest.approx(500 / 6, abs=1e-3)
    assert m["median_km"] == pytest.approx((KM_PER_DEGREE * 1 + KM_PER_DEGREE * 5) / 2, abs=1e-3)
    geoscore = sum(5000 * math.exp(-d / 1492.7) for d in expected_km) / 6  # the unparseable one scores 0
    assert m["geoscore"] == pytest.approx(geoscore, abs=1e-3)
    assert m["unparseable"] == pytest.approx(100 / 6, abs=1e-3)


def test_threshold_is_inclusive():
    # Exactly 25 km counts at 25 km: a prediction 25/KM_PER_DEGREE degrees north.
    df = score([_item(0)], {"img0": {"text": _answer(PARIS[0] + 25 / KM_PER_DEGREE, PARIS[1]), "error": ""}})
    assert df["distance_km"].iloc[0] == pytest.approx(25.0, abs=1e-9)
    assert metrics(df.assign(distance_km=25.0), bootstrap=0)["metrics"]["acc_25km"] == 100.0


def test_names_become_coordinates_and_both_rules_are_reported():
    items = [
        _item(0),
        _item(1, 40.7128, -74.0060, "United States", "New York City", "North America"),
        _item(2, 35.6762, 139.6503, "Japan", "Tokyo", "Asia"),
    ]
    preds = {
        "img0": {"text": "<answer>country: France\ncity: Paris</answer>", "error": ""},
        "img1": {"text": "<answer>country: USA\ncity: NYC</answer>", "error": ""},
        "img2": {"text": "<answer>country: Japan\ncity: unknown</answer>", "error": ""},
    }
    df = score(items, preds).set_index("id")
    assert df.loc["img0", "coordinate_source"] == "city" and df.loc["img0", "distance_km"] < 10
    assert df.loc["img2", "coordinate_source"] == "country"  # the capital: Tokyo
    assert df.loc["img2", "distance_km"] < 25
    # USA / NYC: right under the alias rule, wrong under the released string rule.
    assert df.loc["img1", "country_alias"] and df.loc["img1", "city_alias"]
    assert not df.loc["img1", "country_official"] and not df.loc["img1", "city_official"]
    m = metrics(df.reset_index(), bootstrap=0)
    assert m["metrics"]["country_alias"] == 100.0 and m["metrics"]["country_official"] == pytest.approx(200 / 3, 1e-3)
    assert m["metrics"]["city_alias"] == pytest.approx(200 / 3, 1e-3)  # "unknown" is no city
    assert set(m["per_continent"]) == {"Europe", "North America", "Asia"}
    assert m["per_continent"]["Asia"]["n"] == 1 and m["per_continent"]["Asia"]["acc_25km"] == 100.0
    assert m["coordinate_source"] == {"city": 2, "country": 1}


def test_bootstrap_intervals():
    items = [_item(i) for i in range(200)]
    preds = {
        f"img{i}": {"text": _answer(PARIS[0] + (0.0 if i % 2 else 3.0), PARIS[1]), "error": ""} for i in range(200)
    }
    report = metrics(score(items, preds), bootstrap=500, seed=1)
    lo, hi = report["ci95"]["acc_25km"]
    assert lo < report["metrics"]["acc_25km"] == 50.0 < hi and hi - lo < 20
    same = {f"img{i}": {"text": _answer(*PARIS), "error": ""} for i in range(200)}
    assert metrics(score(items, same), bootstrap=200)["ci95"]["acc_1km"] == [100.0, 100.0]
    assert metrics(score(items, preds), bootstrap=500, seed=1)["ci95"] == report["ci95"]  # seeded


def test_failed_requests_and_missing_predictions_are_misses():
    items = [_item(0), _item(1), _item(2)]
    preds = {"img0": {"text": _answer(*PARIS), "error": ""}, "img1": {"text": "", "error": "HTTP 500"}}
    m = metrics(score(items, preds), bootstrap=0)["metrics"]
    assert m["acc_1km"] == pytest.approx(100 / 3, abs=1e-3)
    assert m["failed"] == pytest.approx(200 / 3, abs=1e-3)  # the error and the missing one
    assert m["median_km"] is None  # two of three are infinitely far


# -- predictions files, resume ----------------------------------------------------------------------------
def _gt_csv(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    path = tmp_path / "gt.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["IMG_ID", "LAT", "LON", "city", "country"])
        w.writerow(["a1", PARIS[0], PARIS[1], "Paris", "France"])
        w.writerow(["b2", 40.7128, -74.0060, "New York City", "United States"])
        w.writerow(["c3", "", "", "Nowhere", "Atlantis"])  # no coordinates: left out, as the released code does
    return path


def test_official_csv_predictions_are_scored(tmp_path):
    gt = _gt_csv(tmp_path)
    official = tmp_path / "official.csv"
    with official.open("w", newline="") as fh:
        cols = [
            "IMG_ID",
            "LAT",
            "LON",
            "city",
            "country",
            "prediction",
            "pred_city",
            "pred_country",
            "pred_LAT",
            "pred_LON",
        ]
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerow(
            {
                "IMG_ID": "a1.jpg",
                "LAT": PARIS[0],
                "LON": PARIS[1],
                "city": "Paris",
                "country": "France",
                "prediction": json.dumps({"data": "<think>x</think><answer>country: france\ncity: paris</answer>"}),
                "pred_city": "paris",
                "pred_country": "france",
            }
        )
        w.writerow(
            {
                "IMG_ID": "b2.jpg",
                "LAT": 40.7128,
                "LON": -74.006,
                "city": "New York City",
                "country": "United States",
                "prediction": json.dumps({"data": "country: USA\ncity: New York"}),
                "pred_city": "new york",
                "pred_country": "usa",
            }
        )
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["eval", "csv", "--data", str(gt), "--predictions", str(official), "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["n"] == 2 and report["skipped_rows"] == 1
    m = report["metrics"]
    assert m["country_official"] == 50.0 and m["city_official"] == 50.0  # "usa" and "new york" fail that rule
    assert m["country_alias"] == 100.0 and m["city_alias"] == 100.0  # GeoNames knows NYC as "New York"
    assert m["acc_25km"] == 100.0  # both resolve to the right city centre
    assert "within     25 km" in result.output and (out / "error_map.png").exists()
    assert len(read_predictions(out / "predictions.jsonl")) == 2


def test_images_are_sent_within_the_pixel_budget():
    import io

    from globe_train.predictors import image_bytes

    buf = io.BytesIO()
    Image.new("RGB", (1000, 800), "red").save(buf, "PNG")
    item = _item(0)
    item.image = buf.getvalue()
    assert image_bytes(item) == buf.getvalue()  # no budget: the file as it is
    small = Image.open(io.BytesIO(image_bytes(item, max_pixels=50_000)))
    assert small.width * small.height <= 50_000 and abs(small.width / small.height - 1.25) < 0.02


def test_jsonl_predictions_with_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "img0", "country": "France", "city": "Lyon"}) + "\n")
    text, error = FilePredictor(path).predict(_item(0))
    assert error == "" and parse_answer(text).city == "Lyon"
    assert FilePredictor(path).predict(_item(9)) == ("", "no prediction in file")


def test_an_id_0_is_kept_and_ids_given_twice_are_refused_naming_them(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"id": 0, "text": "city: Lyon"}, {"id": 1, "text": ""}]))
    assert FilePredictor(path).ids == ["0", "1"]
    path.write_text("".join(json.dumps({"id": i, "text": ""}) + "\n" for i in (0, 7, 7, 7)))
    with pytest.raises(ValueError, match=r"1 id\(s\), e\.g\. '7' \(3x\) answered more than once"):
        FilePredictor(path)
    (tmp_path / "bench.csv").write_text("IMG_ID,LAT,LON\n0,1,2\n5,1,2\n5,3,4\n")
    with pytest.raises(ValueError, match=r"'5' \(2x\) appear more than once"):
        load_benchmark("csv", tmp_path / "bench.csv", tmp_path)
    (tmp_path / "bench.csv").write_text("IMG_ID,LAT,LON\n0,1,2\n5,1,2\n")
    assert [i.id for i in load_benchmark("csv", tmp_path / "bench.csv", tmp_path).items] == ["0", "5"]


def test_the_error_map_draws_great_circles_across_the_date_line_with_a_legend(tmp_path):
    import pandas as pd

    from globe_train.evaluate import ERROR_COLOURS, error_map, great_circle

    # Los Angeles -> Sydney: the arc crosses the Pacific and the date line, in two pieces that meet at +-180.
    pieces = great_circle(34.05, -118.24, -33.87, 151.21)
    assert len(pieces) == 2 and pieces[0][-1][1] in (180.0, -180.0) and pieces[1][0][1] == -pieces[0][-1][1]
    assert all(abs(lo) <= 180 for piece in pieces for _, lo in piece)
    (paris_berlin,) = great_circle(48.85, 2.35, 52.52, 13.40)  # one piece
    assert paris_berlin[0] == pytest.approx((48.85, 2.35)) and paris_berlin[-1] == pytest.approx((52.52, 13.40))
    df = pd.DataFrame(
        [{"true_lat": 34.05, "true_lon": -118.24, "pred_lat": -33.87, "pred_lon": 151.21, "distance_km": 12_060.0}]
    )
    img = Image.open(error_map(df, tmp_path / "map.png", width=1200)).convert("RGB")
    purple = ERROR_COLOURS[-1][1]
    width, height = img.size
    # The line reaches both map edges near the date line, and nothing of it spans the Atlantic.
    near_edges = [img.getpixel((x, y)) for x in (1, 2, width - 3, width - 2) for y in range(height)]
    assert near_edges.count(purple) >= 2
    atlantic = [img.getpixel(((-30 + 180) / 360 * width, y)) for y in range(height)]
    assert purple not in atlantic
    legend = [img.getpixel((20, y)) for y in range(height - 100, height)]
    assert purple in legend and (255, 255, 255) in legend


class _Flaky:
    name = "flaky"
    concurrency = 1

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_after = fail_after

    def predict(self, item):
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt  # the run is killed mid-way
        self.calls.append(item.id)
        return _answer(*PARIS), ""


def test_interrupted_evaluation_resumes_without_asking_twice(tmp_path):
    items = [_item(i) for i in range(8)]
    with pytest.raises(KeyboardInterrupt):
        predict(items, _Flaky(fail_after=3), tmp_path, progress=False)
    path = tmp_path / "predictions.jsonl"
    with path.open("a") as fh:
        fh.write('{"id": "img3", "te')  # a line torn by the kill
    second = _Flaky()
    predict(items, second, tmp_path, progress=False)
    assert second.calls == [f"img{i}" for i in range(3, 8)]
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted(i.id for i in items) and len(ids) == len(set(ids))
    third = _Flaky()
    predict(items, third, tmp_path, progress=False)
    assert third.calls == []


# -- a real OpenAI-compatible server with faults -----------------------------------------------------------
class _ScriptedServer:
    """Chat completions that answer from the image's colour, after a 429 (Retry-After) and a 500."""

    def __init__(self) -> None:
        self.requests = 0
        self.images_seen = 0
        self.faults = ["429", "500"]
        lock = threading.Lock()
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server_self.requests += 1
                    fault = server_self.faults.pop(0) if server_self.faults else None
                if fault == "429":
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                if fault == "500":
                    self.send_response(500)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                url = body["messages"][1]["content"][0]["image_url"]["url"]
                assert url.startswith("data:image/jpeg;base64,")
                with lock:
                    server_self.images_seen += 1
                import base64
                import io

                img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                red = img.getpixel((0, 0))[0] > 128
                text = "<answer>country: France\ncity: Paris</answer>" if red else "country: Japan\ncity: Tokyo"
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_endpoint_predictor_retries_faults_and_scores(tmp_path):
    import io

    server = _ScriptedServer()
    items = []
    for i in range(6):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), "red" if i % 2 == 0 else "blue").save(buf, "JPEG")
        items.append(_item(i) if i % 2 == 0 else _item(i, 35.6762, 139.6503, "Japan", "Tokyo", "Asia"))
        items[-1].image = buf.getvalue()
    predictor = EndpointPredictor(server.url, "scripted", concurrency=3, max_retries=3)
    path = predict(items, predictor, tmp_path, progress=False)
    preds = read_predictions(path)
    assert all(p["error"] == "" for p in preds.values()) and len(preds) == 6
    assert server.requests == 8 and server.images_seen == 6  # two faults, each retried once
    m = metrics(score(items, preds), bootstrap=0)["metrics"]
    assert m["acc_25km"] == 100.0 and m["city_alias"] == 100.0 and m["failed"] == 0.0
    server.server.shutdown()
    # The server is gone: every request fails after its retries and is recorded as failed, not as an answer.
    more = [_item(10 + i) for i in range(2)]
    for it in more:
        it.image = items[0].image
    path = predict(more, EndpointPredictor(server.url, "scripted", max_retries=0, timeout_s=2), tmp_path, False)
    failed = [p for p in read_predictions(path).values() if p["id"].startswith("img1") and p["error"]]
    assert {p["id"] for p in failed} == {"img10", "img11"} and all(p["text"] == "" for p in failed)


# -- benchmarks -------------------------------------------------------------------------------------------
def test_csv_benchmarks_and_their_errors(tmp_path):
    gt = _gt_csv(tmp_path)
    bench = load_benchmark("im2gps3k", gt, tmp_path / "images")
    assert [i.id for i in bench.items] == ["a1", "b2"] and bench.skipped == 1
    assert bench.items[0].image.endswith("images/a1.jpg") and bench.items[1].continent == "North America"
    osv = tmp_path / "osv.csv"
    osv.write_text("id,latitude,longitude\n77,-33.8688,151.2093\n")
    item = load_benchmark("osv5m", osv, tmp_path / "images").items[0]
    assert (item.country, item.city, item.continent) == ("Australia", "Sydney", "Oceania")  # from the gazetteer
    bad = tmp_path / "bad.csv"
    bad.write_text("photo,x,y\n1,2,3\n")
    with pytest.raises(ValueError, match="no id column"):
        load_benchmark("csv", bad, tmp_path / "images")
    with pytest.raises(ValueError, match="needs --data"):
        load_benchmark("yfcc4k")


def test_mp16_reason_test_from_a_local_build(tmp_path):
    from builders.build import build
    from builders.sample.scenes import write_sample

    write_sample(tmp_path / "in", 30)
    recipe = sample_recipe(
        tmp_path / "in", tmp_path / "out", **{"image.max_pixels": 96 * 72, "split.test_fraction": 0.5}
    )
    summary = build(recipe, progress=False)
    bench = load_benchmark("mp16-reason-test", tmp_path / "out")
    assert len(bench.items) == summary.splits["test"]
    assert all(isinstance(i.image, bytes) and i.country and i.continent for i in bench.items)
