"""5. ``grounding``: of the entities the chosen reasoning relies on, at least ``min_fraction`` are visible
according to the segmentation model (see :mod:`builders.curation.grounding`). It also chooses the sample's
reasoning: the candidate whose entities are best grounded (then the higher localizability score, then the
recipe's teacher order)."""

from __future__ import annotations

from pydantic import Field

from builders.curation.filters.base import Answers, Filter, FilterSettings
from mp16_reason.schema import Entity, TeacherAnswer


class GroundingSettings(FilterSettings):
    model: str = Field(
        default="nvidia/segformer-b2-finetuned-ade-512-512",
        description="semantic segmentation model (transformers; ADE20K-style labels): a path or a Hub id",
    )
    min_fraction: float = Field(default=0.5, ge=0.0, le=1.0, description="share of entities that must be grounded")
    min_pixel_share: float = Field(default=0.002, ge=0.0, le=1.0, description="a class covering less is not seen")
    min_similarity: float = Field(
        default=0.6, ge=-1.0, le=1.0, description="entity-to-class cosine that counts as a match (besides words)"
    )


class GroundingFilter(Filter):
    stage = "grounding"
    settings_class = GroundingSettings  # its section of ``curation:``
    settings: GroundingSettings
    _matcher = None

    def matcher(self):
        from builders.curation.embeddings import embedder
        from builders.curation.grounding import EntityMatcher

        if self._matcher is None:  # the agreement filter's sentence model, loaded on first use
            self._matcher = EntityMatcher(
                embedder(self.curation.agreement.embedding_model), self.settings.min_similarity
            )
        return self._matcher

    def check(self, a: Answers) -> str | None:
        from builders.curation.grounding import segmenter

        s = self.settings
        shares = segmenter(s.model).shares(a.jpeg())
        visible = [label for label, share in shares.items() if share >= s.min_pixel_share]
        grounded = {t.teacher: self.matcher().ground(t.entities, visible) for t in a.candidates}
        order = {t.teacher: i for i, t in enumerate(a.answers)}

        def fraction(t: TeacherAnswer) -> float:
            ents = grounded[t.teacher]
            return sum(bool(e.grounded) for e in ents) / len(ents) if ents else 0.0

        chosen = max(a.candidates, key=lambda t: (fraction(t), t.localizability or 0.0, -order[t.teacher]))
        entities: list[Entity] = grounded[chosen.teacher]
        a.chosen = chosen
        a.record.reasoning, a.record.entities = chosen.reasoning, entities
        share = fraction(chosen)
        if share < s.min_fraction or not entities:
            seen = "; ".join(sorted(visible)[:8]) or "nothing"
            missing = ", ".join(repr(e.text) for e in entities if not e.grounded)[:200]
            return (
                f"{sum(bool(e.grounded) for e in entities)} of {len(entities)} entities of {chosen.teacher} seen in "
                f"the image ({share:.2f} < {s.min_fraction:g}); not seen: {missing or '-'}; the model sees: {seen}"
            )
        return None
