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
        ("Deutschland", "DE"),
        ("Atlantis", None),
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


# Countries in their own languages and scripts, as signage shows them and a model may answer.
ENDONYMS = {
    "Deutschland": "DE",
    "Nippon": "JP",
    "日本": "JP",
    "España": "ES",
    "Россия": "RU",
    "中国": "CN",
    "Ελλάδα": "GR",
    "Suomi": "FI",
    "Polska": "PL",
    "Österreich": "AT",
    "Schweiz": "CH",
    "Suisse": "CH",
    "Svizzera": "CH",
    "Magyarország": "HU",
    "Hrvatska": "HR",
    "Italia": "IT",
    "Sverige": "SE",
    "Norge": "NO",
    "Danmark": "DK",
    "Česko": "CZ",
    "Slovensko": "SK",
    "România": "RO",
    "България": "BG",
    "Україна": "UA",
    "Србија": "RS",
    "Türkiye": "TR",
    "Ísland": "IS",
    "Éire": "IE",
    "Lietuva": "LT",
    "Latvija": "LV",
    "Eesti": "EE",
    "Brasil": "BR",
    "México": "MX",
    "대한민국": "KR",
    "ไทย": "TH",
    "საქართველო": "GE",
    "Việt Nam": "VN",
    "ישראל": "IL",
    "مصر": "EG",
    "المغرب": "MA",
    "ایران": "IR",
    "भारत": "IN",
    "Indonesia": "ID",
    "Pilipinas": "PH",
    "Belgique": "BE",
    "België": "BE",
    "Nederland": "NL",
}


@pytest.mark.parametrize(("name", "code"), list(ENDONYMS.items()))
def test_countries_in_their_own_languages(name, code):
    assert country_code(name) == code


def test_cli_match_of_an_endonym():
    from click.testing import CliRunner

    from globe_train.cli import main

    result = CliRunner().invoke(main, ["match", "--pred-country", "Deutschland", "--true-country", "Germany"])
    assert result.exit_code == 0 and "country yes" in result.output, result.output


def test_no_country_name_resolves_to_another_country():
    from babel import Locale, UnknownLocaleError, languages

    from mp16_reason.names import CLDR_LANGUAGES, country_table

    wrong = {}
    for code, row in country_table().items():
        assert country_code(row["name"]) == code  # canonical names still resolve to themselves
        for language in {*languages.get_official_languages(code, de_facto=True), *CLDR_LANGUAGES}:
            try:
                name = Locale.parse(language).territories.get(code)
            except (UnknownLocaleError, ValueError):
                continue
            got = country_code(name) if name else None
            if got not in (code, None):  # None: a name two territories share, left out
                wrong[(code, language, name)] = got
    # Only two-letter native names that are also another country's ISO code stay with the code.
    assert all(len(normalize(name)) <= 3 for _, _, name in wrong), wrong
