"""Validation of coordinates: one clear error for a single value, a per-row report for a batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd


class InvalidCoordinateError(ValueError):
    """A latitude or longitude that is not a finite number in range."""


def _problem(name: str, value: object, limit: float) -> str | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{name} {value!r} is not a number; give decimal degrees such as 48.8566"
    if math.isnan(number) or math.isinf(number):
        return f"{name} {value!r} is not a finite number; give decimal degrees such as 48.8566"
    if not -limit <= number <= limit:
        hint = " (are latitude and longitude swapped?)" if name == "latitude" and abs(number) <= 180 else ""
        return f"{name} {number} is outside [-{limit:g}, {limit:g}]{hint}"
    return None


def check_coordinate(lat: object, lon: object) -> tuple[float, float]:
    """Return ``(lat, lon)`` as floats, or raise :class:`InvalidCoordinateError` naming the bad value."""
    for name, value, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        problem = _problem(name, value, limit)
        if problem:
            raise InvalidCoordinateError(problem)
    return float(lat), float(lon)  # type: ignore[arg-type]


def coerce_coordinates(
    lat: Sequence[object] | np.ndarray, lon: Sequence[object] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert a batch to float arrays and report bad rows instead of failing the batch.

    Returns ``(lat, lon, errors)``: invalid rows hold NaN in both arrays and a reason in ``errors``
    (an object array; ``""`` marks a valid row).
    """
    lat_in = np.asarray(lat, dtype=object) if not isinstance(lat, np.ndarray) else lat
    lon_in = np.asarray(lon, dtype=object) if not isinstance(lon, np.ndarray) else lon
    if lat_in.shape != lon_in.shape or lat_in.ndim != 1:
        raise ValueError(f"lat and lon must be 1-D and of equal length, got shapes {lat_in.shape} and {lon_in.shape}")
    lat_f = pd.to_numeric(pd.Series(lat_in), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    lon_f = pd.to_numeric(pd.Series(lon_in), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    bad = ~(np.isfinite(lat_f) & np.isfinite(lon_f) & (np.abs(lat_f) <= 90.0) & (np.abs(lon_f) <= 180.0))
    errors = np.full(lat_f.shape, "", dtype=object)
    for i in np.flatnonzero(bad):  # only the bad rows pay for a message
        errors[i] = _problem("latitude", lat_in[i], 90.0) or _problem("longitude", lon_in[i], 180.0) or ""
    lat_f[bad] = np.nan
    lon_f[bad] = np.nan
    return lat_f, lon_f, errors
