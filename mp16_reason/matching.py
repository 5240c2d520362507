"""Deciding whether a predicted country/city names the true one.

Two rules, so results can be compared with the paper's:

``official``
    The released GLOBE rule, reproduced exactly: case-insensitive substring either way with a length ratio
    of at least 0.7; an empty prediction never matches. Lengths are taken before lower-casing and the truth
    is not stripped, as in the release. It knows no aliases ("USA" does not match "United States") and
    "New York" does not match "New York City" (8/13 < 0.7).
``alias`` (default)
    Case, accents and punctuation are ignored; countries match when they resolve to the same ISO code
    through the alias table; cities match when the names are equal or when both can name the same GeoNames
    place in the true country (alternate names: "Munich"/"München", "NYC"/"New York City"), including a
    neighbourhood and the city that covers it ("Shibuya" and "Tokyo").
"""

from __future__ import annotations

from typing import Literal

from .names import country_code, normalize

Rule = Literal["alias", "official"]
RULES: tuple[str, ...] = ("alias", "official")
OFFICIAL_RATIO = 0.7


def official_match(pred: str, truth: str, ratio: float = OFFICIAL_RATIO) -> bool:
    """The released GLOBE string rule (see module docstring)."""
    len_pred, len_truth = len(pred), len(truth)
    pred, truth = pred.lower(), truth.lower()
    if len_pred == 0:
        return False
    return (pred in truth and len_pred / len_truth >= ratio) or (truth in pred and len_truth / len_pred >= ratio)


def country_match(pred: str | None, truth: str | None, rule: Rule = "alias") -> bool:
    """Whether ``pred`` names the country ``truth``."""
    if rule == "official":
        return official_match(pred or "", truth or "")
    _check_rule(rule)
    p, t = normalize(pred), normalize(truth)
    if not p or not t:
        return False
    pc, tc = country_code(pred), country_code(truth)
    return pc == tc if (pc and tc) else p == t


def city_match(pred: str | None, truth: str | None, country: str | None = None, rule: Rule = "alias") -> bool:
    """Whether ``pred`` names the city ``truth``; ``country`` (the true country) narrows alternate names."""
    if rule == "official":
        return official_match(pred or "", truth or "")
    _check_rule(rule)
    p, t = normalize(pred), normalize(truth)
    if not p or not t:
        return False
    if p == t:
        return True
    if not country or not country_code(country):
        return False  # alternate names without a country are too ambiguous (Paris, Texas)
    from .gazetteer import default_gazetteer

    gaz = default_gazetteer()
    return bool(gaz.city_ids(p, country) & gaz.city_ids(t, country))


def location_score(
    pred_country: str | None,
    pred_city: str | None,
    true_country: str,
    true_city: str,
    rule: Rule = "alias",
    city_weight: float = 1.0,
    country_weight: float = 0.2,
) -> float:
    """GLOBE's R_geo: 1.0 for country and city, 0.2 for the country only, else 0 (weights configurable)."""
    if not country_match(pred_country, true_country, rule):
        return 0.0
    return city_weight if city_match(pred_city, true_city, true_country, rule) else country_weight


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown matching rule {rule!r}; use one of {', '.join(RULES)}")
