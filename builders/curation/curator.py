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

from builders.curation.filters import ORDER, Answers
from mp16_reason.schema import Sample, TeacherAnswer

if TYPE_CHECKING:
    from builders.recipe import CurationSpec
    from builders.teachers.base import TeacherFailure


@dataclass
class Decision:
    record: Sample  # filled with the teachers' answers and the chosen reasoning
    stage: str = ""  # the filter that dropped it; "" when kept
    reason: str = ""
    judged: bool = False  # has a localizability judgement: belongs in the localizability config

    @property
    def kept(self) -> bool:
        return not self.stage


class Curator:
    """The filters of ``curation:``, run in order over each image's answers."""

    def __init__(self, spec: CurationSpec, n_teachers: int, coordinate_teachers: frozenset[str] = frozenset()) -> None:
        """``n_teachers``: the LVLM teachers; ``coordinate_teachers``: the names of the GeoCLIP ones."""
        self.spec = spec
        self.need = spec.min_teachers or n_teachers
        self.coordinate_teachers = coordinate_teachers
        added = {when: [f.filter(f, spec) for f in spec.filters if f.run == when] for when in ("first", "last")}
        shipped = [kind(getattr(spec, section), spec) for section, kind in ORDER]
        self.filters = [*added["first"], *shipped, *added["last"]]

    def curate(
        self,
        sample: Sample,
        jpeg: Callable[[], bytes],
        answers: list[TeacherAnswer],
        failures: list[TeacherFailure],
    ) -> Decision:
        """Filter one image's answers; ``jpeg`` gives the image's bytes, read only when grounding needs them."""
        from builders.teachers.prompt import PROMPT_VERSION, parse_reply

        record = sample.model_copy(deep=True)
        record.teachers = answers
        record.build.prompt_version = PROMPT_VERSION
        a = Answers(
            record=record,
            answers=[t for t in answers if t.teacher not in self.coordinate_teachers],  # the LVLMs'
            coords=[t for t in answers if t.teacher in self.coordinate_teachers and t.parsed],
            failures=failures,
            jpeg=jpeg,
            coordinate_teachers=self.coordinate_teachers,
        )
        parsed, judges = a.parsed, a.judges
        a.candidates = parsed
        if judges:  # the verdict is the record's, whether or not the localizability filter is on
            record.localizable, mean = self.spec.localizability.verdict(judges)
            record.localizability = round(mean, 4)
        if parsed:  # until a better one is chosen below: the most confident answer
            best = max(parsed, key=lambda t: t.localizability or 0.0)
            record.reasoning, record.entities = best.reasoning, best.entities
        decision = Decision(record, judged=bool(judges))
        if len(parsed) < self.need:
            problems = [str(f) for f in failures] + [
                f"teacher {t.teacher}: reply could not be parsed ({parse_reply(t.raw).error})"
                for t in a.answers
                if not t.parsed
            ]
            decision.stage, decision.reason = (
                "teacher",
                f"{len(parsed)} of {self.need} needed answers; " + "; ".join(problems),
            )
            return decision
        for f in self.filters:
            if f.applies(a) and (reason := f.check(a)):
                decision.stage, decision.reason = f.stage, reason
                return decision
        if a.chosen is None:  # no filter chose: the most confident candidate, then the recipe's teacher order
            order = {t.teacher: i for i, t in enumerate(a.answers)}
            chosen = max(a.candidates, key=lambda t: (t.localizability or 0.0, -order[t.teacher]))
            record.reasoning, record.entities = chosen.reasoning, chosen.entities
        return decision
