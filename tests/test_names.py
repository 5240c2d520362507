import pytest

from mp16_reason.names import canonical_country, country_aliases, country_code, normalize


@pytest.mark.parametrize(
    ("alias", "code"),
    [
        ("USA", "US"),
        ("U.S.A.", "US"),
        ("US", "US"),
        ("United States of America", "US"),
        ("usa ", "US"),
        ("UK", "GB"),
        ("Great Britain", "GB"),
        ("England", "GB"),
        ("united kingdom", "GB"),
        ("Turkey", "TR"),
        ("Türkiye", "TR"),
        ("TURKIYE", "TR"),
        ("Burma", "MM"),
        ("Myanmar", "MM"),
        ("Ivory Coast", "CI"),
        ("Côte d'Ivoire", "CI"),
        ("cote divoire", "CI"),
        ("Cote D’Ivoire", "CI"),
        ("DRC", "CD"),
        ("Congo-Kinshasa", "CD"),
        ("Democratic Republic of the Congo", "CD"),
        ("Holland", "NL"),
        ("the Netherlands", "NL"),
        ("Netherlands", "NL"),
        ("Czech Republic", "CZ"),
        ("Czechia", "CZ"),
        ("South Korea", "KR"),
        ("Korea, Republic of", "KR"),
        ("Viet Nam", "VN"),
        ("Russian Federation", "RU"),
        ("Swaziland", "SZ"),
        ("East Timor", "TL"),
        ("UAE", "AE"),
        ("DEU", "DE"),
        ("Deutschland", None),
    ],
)
def test_country_aliases(alias, code):
    assert country_code(alias) == code


def test_canonical_names_are_english_short_names():
    assert canonical_country("U.S.A.") == "United States"
    assert canonical_country("Holland") == "Netherlands"
    assert canonical_country("Burma") == "Myanmar"
    assert canonical_country("Atlantis") is None
    assert canonical_country("") is None


def test_normalize_ignores_case_accents_and_punctuation():
    assert normalize("São Paulo") == normalize("SAO-PAULO") == "sao paulo"
    assert normalize("  St. John's ") == "st johns"
    assert normalize("Zürich") == "zurich"
    assert normalize("Bosnia & Herzegovina") == normalize("Bosnia and Herzegovina")
    assert normalize(None) == ""


def test_alias_listing_round_trips():
    for alias in country_aliases("GB"):
        assert country_code(alias) == "GB"
    assert "usa" in country_aliases("US")
