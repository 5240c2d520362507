"""Teacher replies for the offline sample, written by hand.

No model produced these. They are templates we wrote, filled with what each drawn scene shows (the city on the
shop sign, the country code on the street sign, the landmark, the ground and trees), in two voices standing
in for the recipe's two teachers. They are cached with ``origin: authored``, every record built from them says
so in ``teachers[].origin``, and the sample's card says so too.

A few scenes get replies that exercise each curation filter: both teachers judge the image not localizable;
both name the wrong place; the teachers disagree; the entities named are not in the picture; one reply is
not JSON; one reply uses the GLOBE tag format instead of JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from builders.recipe import Recipe
from builders.teachers.cache import ReplyCache

LANDMARK_TEXT = {
    "tower": "a tall lattice tower",
    "dome": "a golden dome on a stone building",
    "pyramid": "a sand-coloured pyramid",
    "bridge": "a red arched bridge",
    "lighthouse": "a white lighthouse with a red lantern",
}
GROUND_TEXT = {"grass": "green grass", "sand": "dry sandy ground", "snow": "snow on the ground"}
CLIMATE = {"grass": "a temperate or tropical climate", "sand": "a dry subtropical climate", "snow": "a cold climate"}


def _voice_a(s: dict) -> dict:
    city, mark = s["city"] or s["sign"], LANDMARK_TEXT[s["landmark"]]
    return {
        "localizable": True,
        "localizability": 0.9,
        "reasoning": (
            f"The shop sign reads {s['sign'].upper()}, which names the town. The blue street sign shows the "
            f"country code {s['country_code']}, pointing to {s['country']}. {mark.capitalize()} "
            f"stands on the skyline, and the {GROUND_TEXT[s['ground']]} fits {CLIMATE[s['ground']]}. "
            f"Together these place the photo in {city}, {s['country']}."
        ),
        "entities": [
            {"text": f"shop sign reading {s['sign'].upper()}", "category": "signage"},
            {"text": f"street sign with the code {s['country_code']}", "category": "signage"},
            {"text": LANDMARK_TEXT[s["landmark"]], "category": "landmark"},
            {"text": "trees by the road", "category": "vegetation"},
        ],
        "country": s["country"],
        "city": city,
        "lat": None,
        "lon": None,
    }


def _voice_b(s: dict) -> dict:
    city = s["city"] or s["sign"]
    return {
        "localizable": True,
        "localizability": 0.8,
        "reasoning": (
            f"A large sign on the building spells {s['sign'].upper()}, the name of the town, and the street sign "
            f"carries the code {s['country_code']} of {s['country']}. The skyline shows "
            f"{LANDMARK_TEXT[s['landmark']]}; the {GROUND_TEXT[s['ground']]} suggests {CLIMATE[s['ground']]}. "
            f"My answer is {city} in {s['country']}."
        ),
        "entities": [
            {"text": f"sign spelling {s['sign'].upper()}", "category": "text"},
            {"text": "building with windows", "category": "architecture"},
            {"text": LANDMARK_TEXT[s["landmark"]], "category": "landmark"},
            {"text": "paved road", "category": "landscape"},
        ],
        "country": s["country"],
        "city": city,
        "lat": round(s["lat"], 3),
        "lon": round(s["lon"], 3),
    }


def replies(scene: dict, index: int) -> tuple[str, str]:
    """The two authored reply texts for one scene; ``index`` picks the scenes that exercise the filters."""
    a, b = _voice_a(scene), _voice_b(scene)
    if index % 23 == 5:  # nothing to go on: both judge it not localizable
        for r, score in ((a, 0.2), (b, 0.3)):
            r.update(localizable=False, localizability=score)
    elif index % 29 == 7:  # both misread the signs
        for r in (a, b):
            r.update(country="Atlantis", city="Poseidonia", lat=None, lon=None)
    elif index % 17 == 3:  # the second teacher reads another country
        b.update(country="Atlantis", city="Poseidonia", lat=None, lon=None)
    elif index % 31 == 11:  # entities that are not in the picture
        for r in (a, b):
            r["entities"] = [
                {"text": "red double-decker bus", "category": "vehicle"},
                {"text": "palm trees on a beach", "category": "vegetation"},
                {"text": "snow-capped mountains", "category": "landscape"},
            ]
    text_a, text_b = json.dumps(a, ensure_ascii=False), json.dumps(b, ensure_ascii=False)
    if index % 37 == 13:  # an unusable reply
        text_b = "I am sorry, I cannot tell where this picture was taken."
    elif index % 41 == 19:  # the GLOBE tag format: reasoning and place, but no localizability judgement
        text_b = f"<think>{b['reasoning']}</think><answer>country: {b['country']}\ncity: {b['city']}</answer>"
    return text_a, text_b


def write_cache(inputs: Path, recipe: Recipe) -> Path:
    """``inputs/teacher-cache.jsonl``: the authored replies, keyed for the recipe's teachers and the images in
    ``inputs/images``. Returns its path."""
    if len(recipe.teachers) != 2:
        raise ValueError("the sample's authored replies are written for two teachers")
    scenes = [json.loads(line) for line in (inputs / "scenes.jsonl").read_text().splitlines() if line]
    cache_path = inputs / "authored-replies.sqlite"
    cache_path.unlink(missing_ok=True)
    cache = ReplyCache(cache_path)
    try:
        authored = []
        for i, scene in enumerate(scenes):
            sha = hashlib.sha256((inputs / "images" / scene["file"]).read_bytes()).hexdigest()
            for spec, text in zip(recipe.teachers, replies(scene, i)):
                authored.append(spec.reply(sha, text, origin="authored"))
        cache.put(*authored)
        out = inputs / "teacher-cache.jsonl"
        cache.export(out)
    finally:
        cache.close()
        for p in inputs.glob("authored-replies.sqlite*"):
            p.unlink()
    return out
