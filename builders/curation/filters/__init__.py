"""The curation filters, in the order the curator runs them (each a settings model and a check)."""

from builders.curation.filters.agreement import Agreement, AgreementFilter
from builders.curation.filters.base import Answers, Filter, FilterSettings
from builders.curation.filters.geoclip import Geoclip, GeoclipFilter
from builders.curation.filters.ground_truth import GroundTruth, GroundTruthFilter
from builders.curation.filters.grounding import Grounding, GroundingFilter
from builders.curation.filters.localizability import Localizability, LocalizabilityFilter

# (section of ``curation:``, filter) in the order they run.
ORDER: tuple[tuple[str, type[Filter]], ...] = (
    ("localizability", Localizability),
    ("ground_truth", GroundTruth),
    ("agreement", Agreement),
    ("geoclip", Geoclip),
    ("grounding", Grounding),
)

__all__ = [
    "ORDER", "Agreement", "AgreementFilter", "Answers", "Filter", "FilterSettings", "Geoclip", "GeoclipFilter",
    "GroundTruth", "GroundTruthFilter", "Grounding", "GroundingFilter", "Localizability", "LocalizabilityFilter",
]  # fmt: skip
