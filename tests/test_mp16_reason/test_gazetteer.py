import numpy as np
import pytest

from mp16_reason.coords import InvalidCoordinateError, check_coordinate

# One or more known places per continent: (lat, lon, country code, city, admin1 or None to skip)
KNOWN = [
    (48.8584, 2.2945, "FR", "Paris", "Île-de-France"),  # Eiffel tower
    (51.5007, -0.1246, "GB", "London", "England"),
    (41.8902, 12.4922, "IT", "Rome", None),  # Colosseum
    (40.7580, -73.9855, "US", "New York City", "New York"),  # Times Square -> the city, not the square
    (37.7694, -122.4862, "US", "San Francisco", "California"),  # Golden Gate park
    (19.4326, -99.1332, "MX", "Mexico City", None),
    (-22.9519, -43.2105, "BR", "Rio de Janeiro", "Rio de Janeiro"),
    (-34.6037, -58.3816, "AR", "Buenos Aires", None),
    (35.6595, 139.7005, "JP", "Tokyo", "Tokyo"),  # Shibuya crossing
    (39.9163, 116.3972, "CN", "Beijing", "Beijing"),
    (28.6129, 77.2295, "IN", "Delhi", "Delhi"),  # India Gate: New Delhi lies in Delhi
    (30.0444, 31.2357, "EG", "Cairo", None),
    (-33.9249, 18.4241, "ZA", "Cape Town", "Western Cape"),
    (-1.2921, 36.8219, "KE", "Nairobi", None),
    (-33.8568, 151.2153, "AU", "Sydney", "New South Wales"),  # Opera house
    (-36.8485, 174.7633, "NZ", "Auckland", None),
    (64.1466, -21.9426, "IS", "Reykjavík", None),
    (-18.1416, 178.4419, "FJ", "Suva", None),  # near the antimeridian
]


@pytest.mark.parametrize(("lat", "lon", "cc", "city", "admin1"), KNOWN)
def test_known_places(gaz, lat, lon, cc, city, admin1):
    place = gaz.reverse(lat, lon)
    assert place.country_code == cc
    assert place.city == city
    if admin1:
        assert place.admin1 == admin1
    assert place.city_distance_km < 15
    assert place.geonames_id is not None
    assert place.continent


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (0.0, -30.0),
        (-40.0, -120.0),
        (30.0, -40.0),
        (-50.0, 80.0),
        (90.0, 0.0),
        (-90.0, 0.0),
        (0.0, 180.0),
        (0.0, -180.0),
    ],
)
def test_open_sea_and_poles_get_no_place(gaz, lat, lon):
    place = gaz.reverse(lat, lon)
    assert place.city == "" and place.country == "" and place.geonames_id is None
    assert place.place_distance_km > gaz.country_max_km


def test_antimeridian_is_seamless(gaz):
    # Taveuni, Fiji straddles 180°: points just either side are labelled alike.
    east = gaz.reverse(-16.85, 179.999)
    west = gaz.reverse(-16.85, -179.999)
    assert east.country_code == west.country_code == "FJ"
    assert abs(east.place_distance_km - west.place_distance_km) < 1.0


def test_remote_land_keeps_country_but_no_city(gaz):
    # Chukotka, ~70 km from any town of 1,000: Russia, but no city.
    place = gaz.reverse(65.7, -179.5)
    assert place.country_code == "RU" and place.city == ""


def test_border_towns_keep_their_country(gaz):
    # Kehl (DE) sits across the Rhine from Strasbourg (FR); the catchment never crosses a border.
    assert gaz.reverse(48.5728, 7.8155).country_code == "DE"
    assert gaz.reverse(48.5734, 7.7521).country_code == "FR"


def test_batch_reports_invalid_rows(gaz):
    lat = [48.8584, float("nan"), 95.0, "abc", "51.5", None]
    lon = [2.2945, 0.0, 0.0, 0.0, "-0.12", 0.0]
    df = gaz.reverse_batch(lat, lon)
    assert len(df) == 6
    assert list(df["error"] == "") == [True, False, False, False, True, False]
    assert "not a finite number" in df["error"][1]
    assert "outside [-90, 90]" in df["error"][2]
    assert "'abc' is not a number" in df["error"][3]
    assert df["city"][0] == "Paris" and df["city"][4] == "London"
    # One convention for unknown text, as in the records: "" (never None).
    assert df["city"][1] == "" and df["country"][2] == "" and df["admin1"][3] == ""
    assert all(
        isinstance(v, str) for c in ("country", "country_code", "continent", "admin1", "city", "place") for v in df[c]
    )


def test_batch_matches_single(gaz, mp16_coordinates):
    sample = mp16_coordinates.sample(300, random_state=0)
    df = gaz.reverse_batch(sample["LAT"].to_numpy(), sample["LON"].to_numpy())
    assert (df["error"] == "").all()
    for (lat, lon), (_, row) in zip(sample[["LAT", "LON"]].to_numpy()[:30], df.iloc[:30].iterrows()):
        one = gaz.reverse(lat, lon)
        assert one.city == row["city"] and one.country_code == row["country_code"]
    # Flickr photos are where people are: nearly all get a country.
    assert df["country"].notna().mean() > 0.97


@pytest.mark.parametrize("bad", [(float("nan"), 0), (91, 0), (0, 181), ("x", 0), (None, 0), (0, float("inf"))])
def test_single_point_errors_name_the_value(gaz, bad):
    with pytest.raises(InvalidCoordinateError) as err:
        gaz.reverse(*bad)
    assert ("latitude" in str(err.value)) or ("longitude" in str(err.value))


def test_check_coordinate_hints_at_swapped_axes():
    with pytest.raises(InvalidCoordinateError, match="swapped"):
        check_coordinate(151.2, -33.8)


@pytest.mark.parametrize(
    ("city", "country", "name", "cc"),
    [
        ("Munich", "Germany", "Munich", "DE"),
        ("München", "DE", "Munich", "DE"),
        ("Peking", "China", "Beijing", "CN"),
        ("NYC", "USA", "New York City", "US"),
        ("paris", "France", "Paris", "FR"),
        ("Paris", "USA", "Paris", "US"),
        ("Sao Paulo", None, "São Paulo", "BR"),
    ],
)
def test_forward_picks_most_populous_match(gaz, city, country, name, cc):
    match = gaz.forward(city, country)
    assert match.name == name and match.country_code == cc and match.level == "city"


def test_forward_country_only_gives_capital(gaz):
    match = gaz.forward(None, "Holland")
    assert match.name == "Amsterdam" and match.level == "country"
    match = gaz.forward("Nowhereville", "Japan")
    assert match.name == "Tokyo" and match.level == "country"
    assert gaz.forward("Nowhereville", None) is None
    assert gaz.forward(None, None) is None


def test_forward_reverse_round_trip(gaz):
    # The largest cities of many countries: reverse(forward(name)) gives the same city back.
    top = np.argsort(-gaz.population)
    seen, checked = set(), 0
    for i in top:
        cc = gaz.country_code[i]
        if cc in seen or gaz.city_index[i] != i:
            continue
        seen.add(cc)
        match = gaz.forward(gaz.name[i], cc)
        back = gaz.reverse(match.lat, match.lon)
        assert back.geonames_id == match.geonames_id, (gaz.name[i], back)
        checked += 1
        if checked == 60:
            break
    assert checked == 60


def test_index_is_memory_mapped_text_not_objects(gaz):
    """The index is read through a memory map (its pages are the cache file's, shared by every worker a build
    forks) and its names stay Arrow strings: no Python object per place, whose pages a worker would copy."""
    import pyarrow as pa

    from mp16_reason.gazetteer import Gazetteer, Text

    before = pa.total_allocated_bytes()
    again = Gazetteer()
    assert pa.total_allocated_bytes() - before < 1 << 20  # a parquet read would allocate the table (~12 MB)
    for column in (again.name, again.country_code, again.admin1):
        assert isinstance(column, Text) and len(column) == len(again.lat)
    paris = int(np.flatnonzero(again.geonames_id == 2988507)[0])
    assert again.name[paris] == "Paris" and again.country_code[paris] == "FR"
    picked = again.name[np.array([paris, paris])]
    assert picked.dtype == object and picked.tolist() == ["Paris", "Paris"]
    french = again.country_code == "FR"
    assert french.dtype == bool and french[paris] and 1000 < french.sum() < len(french)


def test_reverse_records_are_reverse_batch_rows(gaz):
    """The worker's path (plain dicts) against the DataFrame's rows: real MP-16-like points, open sea, the
    poles and invalid input, value for value (None where the DataFrame has a missing id)."""
    import math

    import pandas as pd

    rng = np.random.default_rng(7)
    lat = [*rng.uniform(-60, 70, 300).tolist(), 0.0, 90.0, -90.0, float("nan"), 95.0, 48.8584]
    lon = [*rng.uniform(-180, 180, 300).tolist(), -30.0, 0.0, 180.0, 2.0, 2.0, 2.2945]
    frame = gaz.reverse_batch(lat, lon)
    records = gaz.reverse_records(lat, lon)
    assert len(records) == len(frame)
    for want, got in zip(frame.to_dict("records"), records):
        want = {k: None if v is pd.NA else v for k, v in want.items()}
        assert list(got) == list(want)
        for key, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert isinstance(got[key], float) and math.isnan(got[key])
            else:
                assert got[key] == value and type(got[key]) is type(value), (key, got[key], value)
    assert sum(r["city"] != "" for r in records) > 20 and records[-1]["city"] == "Paris"
