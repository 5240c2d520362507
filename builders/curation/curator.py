"""Curation: the paper's four filters over the teachers' answers, and the choice of the sample's reasoning.

In order, each configurable and each stating its numbers when it drops an image:

0. ``teacher``: enough teachers gave a parsed answer (failed and unparsed requests are named).
1. ``localizability``: the judging teachers say localizable (rule ``all``/``any``/``mean``) and their mean
   score reaches ``min_score``.
2. ``ground-truth``: a teacher's country (and city, at ``level: city``) matches the gazetteer's labels with the
   alias-aware rule, or its coordinates fall within ``max_km`` of the photo; ``require: any`` or ``all``.
3. ``agreement``: with two or more answers, the teachers name the same place (each pair, alias-aware) and
   their reasonings are semantically aligned: the mean pairwise cosine of their sentence embeddings reaches
   ``min_similarity``.
4. ``geoclip``: with a coordinate teacher (``kind: geoclip``) and its checks on, GeoCLIP's point lies within
   ``max_km`` of the photo, and ``any``/``all`` LVLM teachers agree with it (coordinates within ``teacher_km``,
   or the place the gazetteer gives the point, at ``level``).
5. ``grounding``: of the entities the chosen reasoning relies on, at least ``min_fraction`` are visible
   according to the segmentation model (see :mod:`builders.curation.grounding`).

Coordinate teachers answer no other filter and never give the reasoning; their answers stay in ``teachers``.

**The sample's reasoning** is that of the teacher, among those that agree with the ground truth, whose
entities are best grounded; ties go to the higher localizability score, then to the recipe's teacher order.
Its entities (with ``grounded``) become the record's ``entities``; every answer is kept in ``teachers``.

Every image with at least one localizability judgement also goes to the ``localizability`` config, whatever
the filters say, labelled with the teachers' verdict: the reward model's training data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from builders.curation.embeddings import embedder, mean_pairwise_cosine
from builders.curation.grounding import EntityMatcher, segmenter
from builders.recipe import CurationSpec
from mp16_reason.distance import haversine_km
from mp16_reason.matching import city_match, country_match
from mp16_reason.schema import Entity, Sample, TeacherAnswer

if TYPE_CHECKING:
    from builders.teachers.base import TeacherFailure
from builders.teachers.prompt import PROMPT_VERSION, parse_reply

STAGES = ("teacher", "localizability", "ground-truth", "agreement", "geoclip", "grounding")


@dataclass
class Decision:
    record: Sample  # filled with the teachers' answers and the chosen reasoning
    stage: str = ""  # the filter that dropped it; "" when kept
    reason: str = ""
    judged: bool = False  # has a localizability judgement: belongs in the localizability config

    @property
    def kept(self) -> bool:
        return not self.stage


def _place(a: TeacherAnswer) -> str:
    return ", ".join(p for p in (a.city, a.country) if p) or "no place"


class Curator:
    def __init__(self, spec: CurationSpec, n_teachers: int, coordinate_teachers: frozenset[str] = frozenset()) -> None:
        """``n_teachers``: the LVLM teachers; ``coordinate_teachers``: the names of the GeoCLIP ones."""
        self.spec = spec
        self.need = spec.min_teachers or n_teachers
        self.coordinate_teachers = coordinate_teachers
        self._matcher: EntityMatcher | None = None

    # Models load on first use, so a build whose filters are off never loads them.
    @property
    def embedder(self):
        return embedder(self.spec.agreement.embedding_model)

    @property
    def matcher(self) -> EntityMatcher:
        if self._matcher is None:
            self._matcher = EntityMatcher(self.embedder, self.spec.grounding.min_similarity)
        return self._matcher

    def _matches_truth(self, a: TeacherAnswer, s: Sample) -> bool:
        near = a.lat is not None and a.lon is not None
        if near and float(haversine_km(a.lat, a.lon, s.lat, s.lon)) <= self.spec.ground_truth.max_km:
            return True
        if not country_match(a.country, s.country):
            return False
        return self.spec.ground_truth.level == "country" or city_match(a.city, s.city, s.country)

    def _near_point(self, a: TeacherAnswer, point: TeacherAnswer) -> bool:
        g = self.spec.geoclip
        near = a.lat is not None and a.lon is not None
        if near and float(haversine_km(a.lat, a.lon, point.lat, point.lon)) <= g.teacher_km:
            return True
        if not country_match(a.country, point.country):
            return False
        return g.level == "country" or city_match(a.city, point.city, point.country)

    def _geoclip(
        self, record: Sample, parsed: list[TeacherAnswer], coords: list[TeacherAnswer], failures: list[TeacherFailure]
    ):
        """Why GeoCLIP's checks drop this image, or None."""
        g = self.spec.geoclip
        if not coords:
            said = "; ".join(str(f) for f in failures if f.teacher in self.coordinate_teachers)
            return f"no GeoCLIP answer ({said or 'none'})"
        point = coords[0]
        if g.max_km is not None:
            km = float(haversine_km(point.lat, point.lon, record.lat, record.lon))
            if km > g.max_km:
                return (
                    f"{point.teacher}'s point is {km:,.0f} km from the photo (> {g.max_km:g} km; "
                    f"confidence {point.confidence or 0:.2f})"
                )
        if g.teachers != "off":
            agree = [a for a in parsed if self._near_point(a, point)]
            if not agree or (g.teachers == "all" and len(agree) < len(parsed)):
                said = "; ".join(f"{a.teacher}: {_place(a)}" for a in parsed)
                return (
                    f"teachers disagree with {point.teacher}'s point ({_place(point)}) at {g.level} level and "
                    f"beyond {g.teacher_km:g} km ({said}; require {g.teachers})"
                )
        return None

    def _same_place(self, a: TeacherAnswer, b: TeacherAnswer) -> bool:
        if not country_match(a.country, b.country):
            return False
        return self.spec.agreement.level == "country" or city_match(a.city, b.city, b.country)

    def curate(
        self,
        sample: Sample,
        jpeg: Callable[[], bytes],
        answers: list[TeacherAnswer],
        failures: list[TeacherFailure],
    ) -> Decision:
        """Filter one image's answers; ``jpeg`` gives the image's bytes, read only when grounding needs them."""
        spec = self.spec
        record = sample.model_copy(deep=True)
        record.teachers = answers
        record.build.prompt_version = PROMPT_VERSION
        coords = [a for a in answers if a.teacher in self.coordinate_teachers and a.parsed]
        answers = [a for a in answers if a.teacher not in self.coordinate_teachers]  # the LVLMs' from here on
        parsed = [a for a in answers if a.parsed]
        judges = [a for a in parsed if a.localizable is not None and a.localizability is not None]
        if judges:
            mean = sum(a.localizability for a in judges) / len(judges)
            votes = [a.localizable for a in judges]
            rule = spec.localizability.rule
            verdict = mean >= spec.localizability.min_score and (
                all(votes) if rule == "all" else any(votes) if rule == "any" else True
            )
            record.localizable, record.localizability = verdict, round(mean, 4)
        if parsed:  # until a better one is chosen below: the most confident answer
            best = max(parsed, key=lambda a: a.localizability or 0.0)
            record.reasoning, record.entities = best.reasoning, best.entities
        decision = Decision(record, judged=bool(judges))

        def drop(stage: str, reason: str) -> Decision:
            decision.stage, decision.reason = stage, reason
            return decision

        if len(parsed) < self.need:
            problems = [str(f) for f in failures] + [
                f"teacher {a.teacher}: reply could not be parsed ({parse_reply(a.raw).error})"
                for a in answers
                if not a.parsed
            ]
            return drop("teacher", f"{len(parsed)} of {self.need} needed answers; " + "; ".join(problems))

        if spec.localizability.enabled:
            if not judges:
                return drop("localizability", "no teacher judged localizability (tag-format replies only)")
            if not record.localizable:
                detail = ", ".join(
                    f"{a.teacher} {'yes' if a.localizable else 'no'} {a.localizability:.2f}" for a in judges
                )
                return drop(
                    "localizability",
                    f"judged not localizable ({detail}; rule {spec.localizability.rule}, "
                    f"mean {record.localizability:.2f} vs min {spec.localizability.min_score:g})",
                )

        candidates = parsed
        if spec.ground_truth.enabled:
            agree = [a for a in parsed if self._matches_truth(a, record)]
            need_all = spec.ground_truth.require == "all"
            if not agree or (need_all and len(agree) < len(parsed)):
                said = "; ".join(f"{a.teacher}: {_place(a)}" for a in parsed)
                return drop(
                    "ground-truth",
                    f"teachers disagree with the truth {record.city or '?'}, {record.country} "
                    f"at {spec.ground_truth.level} level ({said}; require {spec.ground_truth.require})",
                )
            candidates = agree

        if spec.agreement.enabled and len(parsed) >= 2:
            pairs = [(a, b) for i, a in enumerate(parsed) for b in parsed[i + 1 :]]
            apart = [(a, b) for a, b in pairs if not self._same_place(a, b)]
            if apart:
                a, b = apart[0]
                return drop(
                    "agreement",
                    f"teachers name different places at {spec.agreement.level} level: "
                    f"{a.teacher} {_place(a)} vs {b.teacher} {_place(b)}",
                )
            similarity = mean_pairwise_cosine(self.embedder.encode([a.reasoning for a in parsed]))
            if similarity < spec.agreement.min_similarity:
                return drop(
                    "agreement",
                    f"reasonings not aligned: mean cosine {similarity:.2f} < {spec.agreement.min_similarity:g}",
                )

        geoclip = spec.geoclip
        if geoclip.enabled and self.coordinate_teachers and (geoclip.max_km is not None or geoclip.teachers != "off"):
            reason = self._geoclip(record, parsed, coords, failures)
            if reason:
                return drop("geoclip", reason)

        order = {a.teacher: i for i, a in enumerate(answers)}
        if spec.grounding.enabled:
            shares = segmenter(spec.grounding.model).shares(jpeg())
            visible = [label for label, share in shares.items() if share >= spec.grounding.min_pixel_share]
            grounded = {a.teacher: self.matcher.ground(a.entities, visible) for a in candidates}

            def fraction(a: TeacherAnswer) -> float:
                ents = grounded[a.teacher]
                return sum(bool(e.grounded) for e in ents) / len(ents) if ents else 0.0

            chosen = max(candidates, key=lambda a: (fraction(a), a.localizability or 0.0, -order[a.teacher]))
            entities: list[Entity] = grounded[chosen.teacher]
            record.reasoning, record.entities = chosen.reasoning, entities
            share = fraction(chosen)
            if share < spec.grounding.min_fraction or not entities:
                seen = "; ".join(sorted(visible)[:8]) or "nothing"
                missing = ", ".join(repr(e.text) for e in entities if not e.grounded)[:200]
                return drop(
                    "grounding",
                    f"{sum(bool(e.grounded) for e in entities)} of {len(entities)} entities of {chosen.teacher} "
                    f"seen in the image ({share:.2f} < {spec.grounding.min_fraction:g}); not seen: "
                    f"{missing or '-'}; the model sees: {seen}",
                )
        else:
            chosen = max(candidates, key=lambda a: (a.localizability or 0.0, -order[a.teacher]))
            record.reasoning, record.entities = chosen.reasoning, chosen.entities
        return decision
