"""1. ``localizability``: the judging teachers say localizable, and their mean score reaches ``min_score``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from builders.curation.filters.base import Answers, Filter, FilterSettings


class LocalizabilitySettings(FilterSettings):
    rule: Literal["all", "any", "mean"] = Field(
        default="all", description="all/any: every/some judging teacher says localizable; mean: by score alone"
    )
    min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="minimum mean localizability score")

    def verdict(self, judges: list) -> tuple[bool, float]:
        """Localizable or not, and the mean score, of these judging answers."""
        mean = sum(a.localizability for a in judges) / len(judges)
        votes = [a.localizable for a in judges]
        agreed = all(votes) if self.rule == "all" else any(votes) if self.rule == "any" else True
        return mean >= self.min_score and agreed, mean


class LocalizabilityFilter(Filter):
    stage = "localizability"
    settings_class = LocalizabilitySettings  # its section of ``curation:``
    settings: LocalizabilitySettings

    def check(self, a: Answers) -> str | None:
        judges, s = a.judges, self.settings
        if not judges:
            return "no teacher judged localizability (tag-format replies only)"
        if a.record.localizable:
            return None
        detail = ", ".join(f"{j.teacher} {'yes' if j.localizable else 'no'} {j.localizability:.2f}" for j in judges)
        return (
            f"judged not localizable ({detail}; rule {s.rule}, mean {a.record.localizability:.2f} vs min "
            f"{s.min_score:g})"
        )
