"""Each curation filter on hand-made answers (no build): what it keeps, what it drops and the reason it gives,
and the curator's own steps (enough answers, the reasoning chosen)."""

from __future__ import annotations

import io

import pytest

from builders.curation.curator import Curator
from builders.curation.filters import (
    AgreementFilter,
    AgreementSettings,
    Answers,
    GeoclipFilter,
    GeoclipSettings,
    GroundingFilter,
    GroundingSettings,
    GroundTruthFilter,
    GroundTruthSettings,
    LocalizabilityFilter,
    LocalizabilitySettings,
)
from builders.recipe import CurationSpec
from builders.teachers.base import TeacherFailure
from mp16_reason.schema import Entity, Sample, TeacherAnswer

PARIS = Sample(id="x", lat=48.8566, lon=2.3522, country="France", city="Paris")


REASONING = "Haussmann facades and a sign reading PARIS."


def answer(
    name: str,
    country: str = "France",
    city: str = "Paris",
    lat=None,
    lon=None,
    *,
    score=0.8,
    localizable=True,
    reasoning=REASONING,
    entities=(),
) -> TeacherAnswer:
    return TeacherAnswer(
        teacher=name,
        model="m",
        parsed=True,
        country=country,
        city=city,
        lat=lat,
        lon=lon,
        localizable=localizable,
        localizability=score,
        reasoning=reasoning,
        entities=[Entity(text=t, category="") for t in entities],
    )


def answers(*given: TeacherAnswer, coords=(), jpeg=b"", record=PARIS) -> Answers:
    a = Answers(
        record=record.model_copy(deep=True),
        answers=list(given),
        coords=list(coords),
        failures=[],
        jpeg=lambda: jpeg,
        coordinate_teachers=frozenset(c.teacher for c in coords),
    )
    a.candidates = a.parsed
    return a


def spec() -> CurationSpec:
    return CurationSpec()


# -- localizability ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "votes", "scores", "kept"),
    [
        ("all", (True, True), (0.8, 0.6), True),
        ("all", (True, False), (0.9, 0.9), False),  # one says no
        ("any", (True, False), (0.9, 0.9), True),
        ("mean", (False, False), (0.7, 0.6), True),  # by score alone
        ("mean", (True, True), (0.4, 0.5), False),  # mean 0.45 < 0.5
    ],
)
def test_localizability_rules(rule, votes, scores, kept):
    settings = LocalizabilitySettings(rule=rule, min_score=0.5)
    a = answers(*(answer(f"t{i}", localizable=v, score=s) for i, (v, s) in enumerate(zip(votes, scores))))
    a.record.localizable, _ = settings.verdict(a.judges)
    a.record.localizability = sum(scores) / len(scores)
    reason = LocalizabilityFilter(settings, spec()).check(a)
    assert (reason is None) is kept
    if not kept:
        assert reason.startswith("judged not localizable (t0 ") and f"rule {rule}" in reason


def test_localizability_needs_a_judgement():
    a = answers(answer("t0", score=None, localizable=None))
    assert LocalizabilityFilter(LocalizabilitySettings(), spec()).check(a) == (
        "no teacher judged localizability (tag-format replies only)"
    )


# -- ground truth --------------------------------------------------------------------------------------------
def test_ground_truth_by_alias_by_coordinates_and_the_candidates_it_leaves():
    f = GroundTruthFilter(GroundTruthSettings(level="city", max_km=25), spec())
    a = answers(answer("a", "FR", "Paris"), answer("b", "Italy", "Rome"), answer("c", "", "", 48.86, 2.34))
    assert f.check(a) is None and [t.teacher for t in a.candidates] == ["a", "c"]  # alias; 1 km away
    strict = GroundTruthFilter(GroundTruthSettings(require="all"), spec())
    reason = strict.check(answers(answer("a"), answer("b", "Italy", "Rome")))
    assert reason == (
        "teachers disagree with the truth Paris, France at city level (a: Paris, France; b: Rome, Italy; require all)"
    )
    country = GroundTruthFilter(GroundTruthSettings(level="country"), spec())
    assert country.check(answers(answer("a", "France", "Lyon"))) is None


# -- agreement ----------------------------------------------------------------------------------------------
def test_agreement_on_place_and_on_reasoning():
    f = AgreementFilter(AgreementSettings(min_similarity=0.5), spec())
    assert not f.applies(answers(answer("a")))  # one answer: nothing to agree with
    reason = f.check(answers(answer("a"), answer("b", "France", "Lyon")))
    assert reason == "teachers name different places at city level: a Paris, France vs b Lyon, France"
    similar = answers(
        answer("a", reasoning="The sign reads Paris and the buildings are Haussmann style."),
        answer("b", reasoning="Haussmann buildings and a street sign in French: Paris."),
    )
    assert f.check(similar) is None
    apart = answers(
        answer("a", reasoning="Haussmann buildings and a Paris street sign."),
        answer("b", reasoning="Quarterly revenue grew by four percent in the fiscal year."),
    )
    assert f.check(apart).startswith("reasonings not aligned: mean cosine ")


# -- geoclip ------------------------------------------------------------------------------------------------
def test_geoclip_distance_and_missing_answer():
    point = answer("geo", "France", "Paris", 48.8566, 2.3522)
    far = GeoclipFilter(GeoclipSettings(max_km=100), spec())
    assert far.check(answers(answer("a"), coords=[point])) is None
    away = answer("geo", "Spain", "Madrid", 40.4168, -3.7038)
    assert far.check(answers(answer("a"), coords=[away])).startswith("geo's point is 1,053 km from the photo (> 100 km")
    a = answers(answer("a"), coords=[point])
    a.coords, a.failures = [], [TeacherFailure("geo", "GeoCLIP failed: boom", 1, "local")]
    assert far.check(a) == "no GeoCLIP answer (teacher geo: GeoCLIP failed: boom (after 1 attempt(s)))"
    assert not GeoclipFilter(GeoclipSettings(), spec()).applies(a)  # no check asked for: off


# -- grounding ------------------------------------------------------------------------------------------------
def test_grounding_sees_entities_in_the_image_and_chooses_the_best_grounded_reasoning():
    from builders.sample.scenes import draw_scene

    buf = io.BytesIO()
    draw_scene(48.8566, 2.3522, "Paris", "FR", "curation-test").save(buf, "JPEG", quality=92)
    settings = GroundingSettings(model="bundled:scene-segmenter", min_fraction=0.5)
    f = GroundingFilter(settings, spec())
    seen = answer("seen", entities=["shop sign", "road"], score=0.5)
    unseen = answer("unseen", entities=["volcano", "glacier"], score=0.9)
    a = answers(unseen, seen, jpeg=buf.getvalue())
    assert f.check(a) is None
    assert a.chosen.teacher == "seen" and all(e.grounded for e in a.record.entities)  # grounding beats the score
    alone = answers(unseen, jpeg=buf.getvalue())
    reason = f.check(alone)
    assert reason.startswith("0 of 2 entities of unseen seen in the image (0.00 < 0.5); not seen: 'volcano'")


# -- the curator --------------------------------------------------------------------------------------------
def test_the_curator_needs_every_teachers_answer_and_otherwise_chooses_the_most_confident():
    off = {"enabled": False}
    s = CurationSpec.model_validate({"localizability": off, "ground_truth": off, "agreement": off, "grounding": off})
    curator = Curator(s, n_teachers=2)
    unparsed = TeacherAnswer(teacher="b", model="m", parsed=False, raw="no idea")
    d = curator.curate(PARIS, lambda: b"", [answer("a"), unparsed], [])
    assert d.stage == "teacher" and d.reason.startswith("1 of 2 needed answers; teacher b: reply could not be parsed")
    two = [answer("a", score=0.6, reasoning="A"), answer("b", score=0.9, reasoning="B")]
    d = curator.curate(PARIS, lambda: b"", two, [])
    assert d.kept and d.record.reasoning == "B" and d.record.localizable and d.record.localizability == 0.75
