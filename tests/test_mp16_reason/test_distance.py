import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mp16_reason.distance import (
    EARTH_RADIUS_KM,
    accuracy_table,
    distance_km,
    geodesic_km,
    geoscore,
    haversine_km,
)

lats = st.floats(-90, 90, allow_nan=False)
lons = st.floats(-180, 180, allow_nan=False)


def test_hand_computed_distances():
    # A quarter of a great circle along the equator and pole to pole.
    assert haversine_km(0, 0, 0, 90) == pytest.approx(math.pi / 2 * EARTH_RADIUS_KM)
    assert haversine_km(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    # One degree of latitude.
    assert haversine_km(0, 0, 1, 0) == pytest.approx(111.195, abs=1e-3)
    # Across the antimeridian is short, not 360 degrees around.
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(111.195, abs=1e-3)
    # Paris -> London: about 344 km.
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)


def test_geodesic_agrees_and_is_exact_option():
    d = geodesic_km([48.8566, 0.0], [2.3522, 0.0], [51.5074, 0.0], [-0.1278, 1.0])
    assert d[0] == pytest.approx(343.9, abs=0.5)
    assert d[1] == pytest.approx(111.319, abs=1e-3)  # equatorial degree on WGS-84
    assert np.isnan(geodesic_km(np.nan, 0, 0, 0))
    assert distance_km(0, 0, 0, 1, method="geodesic") == pytest.approx(111.319, abs=1e-3)
    with pytest.raises(ValueError, match="unknown distance method"):
        distance_km(0, 0, 0, 1, method="manhattan")


def test_vectorised_and_broadcasting():
    lat = np.array([0.0, 10.0, np.nan])
    d = haversine_km(lat, 0.0, 0.0, 0.0)
    assert d.shape == (3,)
    assert d[0] == 0.0 and np.isnan(d[2])


def test_accuracy_table_uses_less_or_equal():
    table = accuracy_table([0.5, 1.0, 25.0, 25.0001, 3000.0, np.nan])
    assert table == {"1km": 2 / 6, "25km": 3 / 6, "200km": 4 / 6, "750km": 4 / 6, "2500km": 4 / 6}
    with pytest.raises(ValueError):
        accuracy_table([])


def test_geoscore():
    assert geoscore(0.0) == 5000.0
    assert geoscore(1492.7) == pytest.approx(5000 / math.e)
    assert geoscore(np.nan) == 0.0


@settings(max_examples=300, deadline=None)
@given(lats, lons, lats, lons)
def test_haversine_properties(a1, o1, a2, o2):
    d = float(haversine_km(a1, o1, a2, o2))
    assert 0.0 <= d <= math.pi * EARTH_RADIUS_KM + 1e-6
    assert d == pytest.approx(float(haversine_km(a2, o2, a1, o1)), abs=1e-6)
    assert float(haversine_km(a1, o1, a1, o1)) == pytest.approx(0.0, abs=1e-6)
    assert float(haversine_km(a1, o1 - 360.0 if o1 > 0 else o1 + 360.0, a2, o2)) == pytest.approx(d, abs=1e-5)


@settings(max_examples=200, deadline=None)
@given(lats, lons, lats, lons, lats, lons)
def test_haversine_triangle_inequality(a1, o1, a2, o2, a3, o3):
    assert haversine_km(a1, o1, a3, o3) <= haversine_km(a1, o1, a2, o2) + haversine_km(a2, o2, a3, o3) + 1e-6


@settings(max_examples=100, deadline=None)
@given(st.floats(-80, 80), lons, st.floats(-80, 80), lons)
def test_haversine_close_to_ellipsoid(a1, o1, a2, o2):
    h, g = float(haversine_km(a1, o1, a2, o2)), float(geodesic_km(a1, o1, a2, o2))
    if g > 1.0:  # the sphere and WGS-84 differ by at most ~0.56 %
        assert abs(h - g) / g < 0.006
