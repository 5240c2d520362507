"""GLOBE reward functions on hand-written completions (TRL's call signature)."""

from __future__ import annotations

import math

import pytest

from globe_train.rewards import coordinate_reward, format_reward, geo_accuracy, visual_grounding


def conv(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


GOOD = "<think>Red double-decker bus and a black cab.</think><answer>country: United Kingdom\ncity: London</answer>"


@pytest.mark.parametrize(
    ("text", "score"),
    [
        (GOOD, 1.0),
        ("<think>x</think>\n<answer>country: France\ncity: Paris</answer>", 1.0),
        (GOOD + "\n", 0.0),  # something after </answer>
        (" " + GOOD, 0.0),  # something before <think>
        ("<answer>country: France\ncity: Paris</answer>", 0.0),  # no think
        ("<think>x</think><answer>country: France</answer>", 0.0),  # no city line
        ("<think>x</think><answer>country: France, city: Paris</answer>", 0.0),  # one line
        ("<think>x</think><answer>country: \ncity: </answer>", 0.0),  # empty values
        ("", 0.0),
    ],
)
def test_format_reward(text, score):
    assert format_reward([conv(text)]) == [score]


F, P = "France", "Paris"
# (completion, format strict, format official, R_geo official reward, R_geo alias) against France / Paris.
RULE_CASES = {
    "well formed": ("<think>x</think><answer>country: France\ncity: Paris</answer>", 1, 1, 1.0, 1.0),
    "missing tags": ("country: France\ncity: Paris", 0, 0, 0.0, 1.0),
    "no think": ("<answer>country: France\ncity: Paris</answer>", 0, 0, 1.0, 1.0),
    "unclosed think": ("<think>x<answer>country: France\ncity: Paris</answer>", 0, 0, 1.0, 1.0),
    "unclosed answer": ("<think>x</think><answer>country: France\ncity: Paris", 0, 0, 0.0, 1.0),
    "upper-case tags": ("<THINK>x</THINK><ANSWER>country: France\ncity: Paris</ANSWER>", 0, 0, 0.0, 1.0),
    "empty answer": ("<think>x</think><answer></answer>", 0, 1, 0.0, 0.0),
    "blank answer": ("<think>x</think><answer>\n \n</answer>", 0, 1, 0.0, 0.0),
    "whitespace between": ("<think>x</think>\n \t\n<answer>country: France\ncity: Paris</answer>", 1, 1, 1.0, 1.0),
    "whitespace inside": ("<think>x</think><answer>\n  country:   France  \n city:Paris\n</answer>", 1, 1, 1.0, 1.0),
    "leading space": (" <think>x</think><answer>country: France\ncity: Paris</answer>", 0, 0, 1.0, 1.0),
    "trailing newline": ("<think>x</think><answer>country: France\ncity: Paris</answer>\n", 0, 0, 1.0, 1.0),
    "text after": ("<think>x</think><answer>country: France\ncity: Paris</answer> Or Lyon.", 0, 0, 1.0, 1.0),
    # The released pattern's lazy groups stretch to a second </answer>; the first block is still the one read.
    "second answer block": (
        "<think>x</think><answer>country: France\ncity: Paris</answer><answer>country: Spain</answer>",
        0,
        1,
        1.0,
        1.0,
    ),
    "country only": ("<think>x</think><answer>country: France</answer>", 0, 1, 0.2, 0.2),
    "one line": ("<think>x</think><answer>country: France, city: Paris</answer>", 0, 1, 0.0, 0.0),
    "capital labels": ("<think>x</think><answer>Country: France\nCity: Paris</answer>", 0, 1, 0.0, 1.0),
    "wrong country": ("<think>x</think><answer>country: Belgium\ncity: Paris</answer>", 1, 1, 0.0, 0.0),
    "empty": ("", 0, 0, 0.0, 0.0),
}


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_format_and_accuracy_under_both_rules(case):
    text, strict, official, geo_official, geo_alias = RULE_CASES[case]
    assert format_reward([conv(text)]) == [strict]
    assert format_reward([conv(text)], rule="official") == [official]
    assert geo_accuracy([conv(text)], country=[F], city=[P], rule="official") == [geo_official]
    assert geo_accuracy([conv(text)], country=[F], city=[P]) == [geo_alias]


def test_the_two_official_extractions_differ_only_without_an_answer_block():
    from mp16_reason.answer import official_eval_extract, official_reward_extract

    tagged = "<think>x</think><answer>\ncountry: France \ncity: Paris\n</answer> country: Spain"
    assert official_reward_extract(tagged) == official_eval_extract(tagged) == ("france", "paris")
    for untagged, whole in [
        ("country: France\ncity: Paris", ("france", "paris")),
        ("<answer>country: France\ncity: Paris", ("france", "paris")),
        ("<ANSWER>country: France\ncity: Paris</ANSWER>", ("france", "paris</answer>")),
    ]:
        assert official_reward_extract(untagged) == ("", "")  # the reward: no block, no answer
        assert official_eval_extract(untagged) == whole  # the evaluation: the rest of each line, whole text
    assert official_reward_extract("<answer></answer>") == official_eval_extract("") == ("", "")
    assert official_eval_extract("<answer>Country: France</answer>") == ("", "")  # labels are case-sensitive


def test_geo_accuracy_values_and_rules():
    completions = [
        conv(GOOD),
        conv("<think>x</think><answer>country: UK\ncity: Manchester</answer>"),
        conv("<think>x</think><answer>country: France\ncity: London</answer>"),  # right city, wrong country
        conv("<think>x</think><answer>country: USA\ncity: NYC</answer>"),
        conv("<think>x</think><answer>Country: United Kingdom\nCity: London</answer>"),
        conv("no answer at all"),
    ]
    truth_country = ["United Kingdom", "United Kingdom", "United Kingdom", "United States", "United Kingdom", "France"]
    truth_city = ["London", "London", "London", "New York City", "London", "Paris"]
    alias = geo_accuracy(completions, country=truth_country, city=truth_city)
    assert alias == [1.0, 0.2, 0.0, 1.0, 1.0, 0.0]
    official = geo_accuracy(completions, country=truth_country, city=truth_city, rule="official")
    assert official == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # no aliases; capital labels are not read
    weighted = geo_accuracy(completions[:2], country=truth_country[:2], city=truth_city[:2], country_weight=0.5)
    assert weighted == [1.0, 0.5]


def test_visual_grounding_is_recall_of_reference_entities_in_think():
    text = "<think>A Red Double-Decker Bus passes a phone box.</think><answer>country: UK\ncity: London</answer>"
    entities = [[{"text": "red double-decker bus"}, {"text": "phone box"}, {"text": "black cab"}]]
    assert visual_grounding([conv(text)], entities=entities) == [pytest.approx(2 / 3)]
    assert visual_grounding([conv(text)], entities=[["black cab"]]) == [0.0]
    assert visual_grounding([conv(text)], entities=[[]]) == [0.0]  # no references: nothing to reward
    in_answer_only = "<think>hm</think><answer>country: UK\ncity: London phone box</answer>"
    assert visual_grounding([conv(in_answer_only)], entities=[["phone box"]]) == [0.0]


def test_visual_grounding_official_rule_is_the_released_one():
    refs = [[{"text": "phone box"}, {"text": " Black Cab"}, {"text": ""}]]
    closed = "<think>a phone box and a black cab</think><answer>country: UK\ncity: London</answer>"
    unclosed = "<think>a phone box and a black cab, so London"
    assert visual_grounding([conv(closed)], entities=refs) == [1.0]  # strict: stripped, blanks dropped
    assert visual_grounding([conv(unclosed)], entities=refs) == [0.0]  # strict: no closed <think>
    # Released: " black cab" (leading space) is searched as given, the blank entity always "matches", and
    # without </think> the whole text is the reasoning.
    assert visual_grounding([conv(closed)], entities=refs, rule="official") == [1.0]
    assert visual_grounding([conv(unclosed)], entities=refs, rule="official") == [1.0]
    assert visual_grounding([conv("<think>nothing</think>")], entities=refs, rule="official") == [pytest.approx(1 / 3)]


def test_coordinate_reward_decays_with_distance():
    exact = "<think>x</think><answer>country: France\ncity: Paris\nlat: 48.8566\nlon: 2.3522</answer>"
    named = "<think>x</think><answer>country: France\ncity: Lyon</answer>"  # forward-geocoded, ~392 km away
    scores = coordinate_reward([conv(exact), conv(named), conv("nothing")], lat=[48.8566] * 3, lon=[2.3522] * 3)
    assert scores[0] == pytest.approx(1.0)
    assert math.exp(-420 / 750) < scores[1] < math.exp(-380 / 750)
    assert scores[2] == 0.0


def test_plain_string_completions_work_too():
    assert format_reward([GOOD]) == [1.0]
    assert geo_accuracy([GOOD], country=["United Kingdom"], city=["London"]) == [1.0]


def test_the_help_and_the_card_say_what_a_reward_scores_from_its_registry_entry(monkeypatch):
    from globe_train import rewards as registry
    from globe_train.cli import quick_help

    def brevity(completions, **kwargs):
        """Shorter reasoning scores higher."""
        return [0.0 for _ in completions]

    monkeypatch.setattr(registry, "_REWARDS", registry.Registry(registry.ENTRY_POINTS, shipped=dict(registry.SHIPPED)))
    registry.register("brevity", brevity)
    help_text = quick_help("grpo")
    assert "brevity" in help_text and "Shorter reasoning scores higher." in help_text
    known = registry.rewards()
    settings = {"geo_city_reward": 1.0, "geo_country_reward": 0.3, "geo_rule": "alias", "coordinate_scale_km": 750}
    assert known["geo_accuracy"].describe(settings).startswith("R_geo: 1.0 when country and city match, 0.3")
    assert known["coordinate"].describe(settings).startswith("exp(-distance / 750 km)")
    assert known["brevity"].describe(settings) == "Shorter reasoning scores higher."
