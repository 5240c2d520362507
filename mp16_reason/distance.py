"""Great-circle distances and the standard geo-localization accuracy table.

Thresholds use ``<=``: a prediction exactly 25 km away counts as correct at 25 km (as in GeoCLIP's code;
GeoRanker and OSV-5M use ``<``, which differs only on exact ties). A missing prediction (NaN distance)
counts as a miss at every threshold.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius, the usual choice for haversine
THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
GEOSCORE_SCALE_KM = 1492.7  # OSV-5M / GeoGuessr scale: 5000 * exp(-d / 1492.7)


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Great-circle distance in km on a sphere; broadcasts like numpy, NaN in gives NaN out."""
    la1, lo1, la2, lo2 = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    )
    shape = np.broadcast_shapes(np.shape(lat1), np.shape(lon1), np.shape(lat2), np.shape(lon2))
    p1, p2 = np.radians(la1), np.radians(la2)
    dlat = p2 - p1
    dlon = np.radians(lo2 - lo1)
    a = np.sin(dlat * 0.5)
    a *= a
    b = np.sin(dlon * 0.5)
    b *= b
    b *= np.cos(p1)
    b *= np.cos(p2)
    a += b
    np.clip(a, 0.0, 1.0, out=a)
    np.sqrt(a, out=a)
    np.arcsin(a, out=a)
    a *= 2.0 * EARTH_RADIUS_KM
    return a.reshape(shape)


def geodesic_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Distance on the WGS-84 ellipsoid (geopy/Karney); exact but ~20x slower than haversine."""
    from geopy.distance import geodesic

    arrays = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (lat1, lon1, lat2, lon2)))
    out = np.full(arrays[0].shape, np.nan)
    flat = [a.ravel() for a in arrays]
    res = out.reshape(-1)
    for i in range(res.size):
        a1, o1, a2, o2 = flat[0][i], flat[1][i], flat[2][i], flat[3][i]
        if np.isfinite(a1) and np.isfinite(o1) and np.isfinite(a2) and np.isfinite(o2):
            res[i] = geodesic((a1, o1), (a2, o2)).km
    return out


def distance_km(
    lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike, method: str = "haversine"
) -> np.ndarray:
    """Distance with ``method`` = ``"haversine"`` (default, fast) or ``"geodesic"`` (exact)."""
    if method == "haversine":
        return haversine_km(lat1, lon1, lat2, lon2)
    if method == "geodesic":
        return geodesic_km(lat1, lon1, lat2, lon2)
    raise ValueError(f"unknown distance method {method!r}; use 'haversine' or 'geodesic'")


def accuracy_table(distances_km: ArrayLike, thresholds: tuple[float, ...] = THRESHOLDS_KM) -> dict[str, float]:
    """Share of predictions with distance ``<=`` each threshold, as ``{"1km": 0.12, "25km": ...}``."""
    d = np.asarray(distances_km, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("accuracy_table needs at least one distance")
    hits = np.where(np.isnan(d), np.inf, d)
    return {f"{t:g}km": float(np.mean(hits <= t)) for t in thresholds}


def geoscore(distances_km: ArrayLike) -> np.ndarray:
    """GeoScore per prediction: 5000 at 0 km, decaying exponentially; 0 for a missing prediction."""
    d = np.asarray(distances_km, dtype=np.float64)
    return np.where(np.isnan(d), 0.0, 5000.0 * np.exp(-d / GEOSCORE_SCALE_KM))
