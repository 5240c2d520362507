"""GLOBE's rewards as plain functions with TRL's reward signature.

Each takes ``completions`` (TRL's conversational form ``[[{"role": "assistant", "content": ...}], ...]`` or
plain strings) and the dataset's extra columns as keyword lists aligned with them, and returns one float per
completion. The localizability reward, which needs a reward model, lives in ``localizability.py``;
``get_reward_funcs`` builds a recipe's list by name, with the recipe's settings bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mp16_reason.answer import answer_location, completion_text, official_reward_extract, parse_answer
from mp16_reason.distance import haversine_km
from mp16_reason.matching import location_score
from mp16_reason.plugins import Registry

# The whole completion: <think>...</think>, optional whitespace, <answer>...</answer>, nothing after.
_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.S)  # used with fullmatch
_COUNTRY_LINE = re.compile(r"^[ \t]*country:[ \t]*\S", re.M)
_CITY_LINE = re.compile(r"^[ \t]*city:[ \t]*\S", re.M)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# The released format check, verbatim: lazy groups can stretch across a second </answer>, and the answer may be
# empty.
_OFFICIAL_FORMAT = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>(?![\s\S])", re.S | re.M)


def format_reward(completions: list, rule: str = "strict", **kwargs: Any) -> list[float]:
    """1.0 when the whole completion is ``<think>…</think><answer>…</answer>``, else 0.0.

    ``rule="strict"`` (default) also wants non-empty ``country:`` and ``city:`` lines in the answer;
    ``"official"`` is the released check exactly (an empty answer passes)."""
    out = []
    for c in completions:
        text = completion_text(c)
        if rule == "official":
            ok = bool(_OFFICIAL_FORMAT.match(text))
        else:
            m = _FORMAT.fullmatch(text)
            ok = bool(m and _COUNTRY_LINE.search(m.group(1)) and _CITY_LINE.search(m.group(1)))
            ok = ok and all(text.count(tag) == 1 for tag in _TAGS)  # no second block hiding in a lazy group
        out.append(1.0 if ok else 0.0)
    return out


def geo_accuracy(
    completions: list,
    country: list[str],
    city: list[str],
    rule: str = "alias",
    city_weight: float = 1.0,
    country_weight: float = 0.2,
    **kwargs: Any,
) -> list[float]:
    """R_geo: ``city_weight`` when country and city match, ``country_weight`` when only the country does,
    else 0 (the released values 1.0 / 0.2). ``rule="official"`` is the released reward exactly: its answer
    extraction (nothing outside ``<answer>`` tags) and its string rule."""
    out = []
    for c, true_country, true_city in zip(completions, country, city):
        text = completion_text(c)
        if rule == "official":
            pred_country, pred_city = official_reward_extract(text)
        else:
            ans = parse_answer(text)
            pred_country, pred_city = ans.country, ans.city
        out.append(location_score(pred_country, pred_city, true_country, true_city, rule, city_weight, country_weight))
    return out


def visual_grounding(completions: list, entities: list[list[Any]], rule: str = "strict", **kwargs: Any) -> list[float]:
    """R_vis: the fraction of the sample's reference entity texts mentioned in the reasoning (case-insensitive
    substring; 0 when the sample has no entities), recall as the released code computes it.

    ``rule="strict"`` (default) reads only a closed ``<think>…</think>`` and ignores blank entities;
    ``"official"`` is the released reward exactly: without ``</think>`` the whole text counts as reasoning,
    and entity texts are used as given (a blank one always "matches")."""
    out = []
    for c, refs in zip(completions, entities):
        texts = {(e.get("text", "") if isinstance(e, dict) else str(e)).lower() for e in refs or []}
        if rule != "official":
            texts = {t.strip() for t in texts} - {""}
        if not texts:
            out.append(0.0)
            continue
        text = completion_text(c)
        if rule == "official":
            think = text.split("</think>")[0].replace("<think>", "").lower()
        else:
            think = text.split("</think>", 1)[0].replace("<think>", "").lower() if "</think>" in text else ""
        out.append(sum(t in think for t in texts) / len(texts))
    return out


def coordinate_reward(
    completions: list, lat: list[float], lon: list[float], scale_km: float = 750.0, **kwargs: Any
) -> list[float]:
    """A continuous reward exp(-d / scale_km) from the great-circle distance between the answer's location
    (its own lat/lon, else the forward-geocoded city/country) and the truth; 0 without a location."""
    out = []
    for c, true_lat, true_lon in zip(completions, lat, lon):
        where = answer_location(parse_answer(completion_text(c)))
        if where is None or true_lat is None:
            out.append(0.0)
            continue
        d = float(haversine_km(true_lat, true_lon, where[0], where[1]))
        out.append(math.exp(-d / scale_km))
    return out


class NamedReward:
    """A reward with settings bound, logged by TRL as ``rewards/<name>/mean`` (TRL unwraps a ``partial`` to the
    function's own name, e.g. ``format_reward``); picklable, unlike a closure."""

    def __init__(self, func, name: str, **settings: Any) -> None:
        self.func, self.__name__, self.settings = func, name, settings

    def __call__(self, completions: list, **kwargs: Any) -> list[float]:
        return self.func(completions, **{**kwargs, **self.settings})


# The rewards a recipe's ``reward_funcs`` may name: name -> a factory that binds the recipe's settings
# (``args``: ``GRPOScriptArguments``; ``group``: the number of generations per prompt). Add one with
# :func:`register`, as open-r1's ``get_reward_funcs`` registry does, or, from another package, by an entry point
# in the group ``globe_train.rewards`` naming a plain reward function (the entry point's name is the reward's).
RewardFactory = Callable[[Any, int], Callable[..., list]]


@dataclass(frozen=True)
class Reward:
    """A reward a recipe may name: ``bind(args, group)`` makes the reward function with the recipe's settings,
    and ``text`` says what it scores, in the words of the model card and of ``globe train grpo --help``
    (``{field}``: a script argument's value)."""

    bind: RewardFactory
    text: str = ""

    def __call__(self, args, group: int) -> Callable[..., list]:
        return self.bind(args, group)

    def describe(self, settings: dict[str, Any] | None = None) -> str:
        """The text with the run's settings filled in (a field the run lacks stays named)."""
        values = _Named(settings or {})
        return self.text.format_map(values)


class _Named(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _localizability(args, group: int):
    from .localizability import reward_from_args  # a reward model: loaded only when named

    return reward_from_args(args, group)


def _geo_accuracy(args, group: int) -> NamedReward:
    weights = {"city_weight": args.geo_city_reward, "country_weight": args.geo_country_reward}
    return NamedReward(geo_accuracy, "geo_accuracy", rule=args.geo_rule, **weights)


def _plain(reward: Callable[..., list], name: str, text: str = "") -> Reward:
    """A plain reward function (TRL's signature) as a nameable reward; its text, its docstring's first line."""
    summary = text or ((reward.__doc__ or "").strip().splitlines() or [""])[0]
    return Reward(lambda args, group: NamedReward(reward, name), summary)


SHIPPED: dict[str, Reward] = {
    "geo_accuracy": Reward(
        _geo_accuracy,
        "R_geo: {geo_city_reward} when country and city match, {geo_country_reward} when only the country does "
        "({geo_rule} matching)",
    ),
    "localizability": Reward(
        _localizability, "R_loc: P(yes) of the localizability reward model, given the photo and the reasoning"
    ),
    "visual_grounding": Reward(
        lambda args, group: NamedReward(visual_grounding, "visual_grounding", rule=args.visual_rule),
        "R_vis: share of the photo's reference visual entities named in the reasoning",
    ),
    "format": Reward(
        lambda args, group: NamedReward(format_reward, "format", rule=args.format_rule),
        "1 when the completion is <think>…</think><answer>…</answer> with country and city lines",
    ),
    "coordinate": Reward(
        lambda args, group: NamedReward(coordinate_reward, "coordinate", scale_km=args.coordinate_scale_km),
        "exp(-distance / {coordinate_scale_km} km) between the answer's location and the truth",
    ),
}
ENTRY_POINTS = "globe_train.rewards"
# A package names a plain reward function in the entry point group; the entry point's name is the reward's.
_REWARDS: Registry[Reward] = Registry(
    ENTRY_POINTS, shipped=SHIPPED, adopt=lambda point: (point.name, _plain(point.load(), point.name))
)


def register(
    name: str, reward: Callable[..., list] | None = None, factory: RewardFactory | None = None, text: str = ""
) -> None:
    """Make a reward nameable in recipes: a plain reward function (TRL's signature; its docstring's first line
    says what it scores), or a ``factory(args, group)`` that binds recipe settings, with its ``text``."""
    if (reward is None) == (factory is None):
        raise ValueError("give the reward function or its factory")
    _REWARDS.register(Reward(factory, text) if factory else _plain(reward, name, text), name)


def kinds() -> dict[str, Reward]:
    """Every reward a recipe may name, by name: the shipped ones and those other packages add (entry points read
    once). The registries all read alike: ``register``, ``kinds()`` and one function that resolves a recipe's
    entries (here :func:`get_reward_funcs`)."""
    return _REWARDS.items()


rewards = kinds  # the name the training code and plug-ins have used


def get_reward_funcs(args, num_generations: int = 1) -> list:
    """The reward functions a GRPO recipe names (``args``: ``GRPOScriptArguments``), settings bound, in order."""
    known = rewards()
    return [known[name](args, num_generations) for name in args.reward_funcs]
