"""The ``globe`` command line."""

from __future__ import annotations

import json

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train, evaluate and run GLOBE geo-localization models."""


@main.command()
@click.option("--pred-country", required=True, help="Predicted country.")
@click.option("--pred-city", default="", help="Predicted city.")
@click.option("--true-country", required=True, help="True country.")
@click.option("--true-city", default="", help="True city.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def match(pred_country: str, pred_city: str, true_country: str, true_city: str, as_json: bool) -> None:
    """Score a predicted location under both matching rules (the R_geo reward).

    \b
    `official` is the released GLOBE string rule; `alias` (the default everywhere else) knows
    country aliases and city alternate names:
      globe match --pred-country USA --pred-city NYC --true-country "United States" --true-city "New York City"
    """
    from mp16_reason.matching import RULES, city_match, country_match, location_score

    result = {
        rule: {
            "country": country_match(pred_country, true_country, rule),
            "city": city_match(pred_city, true_city, true_country, rule),
            "r_geo": location_score(pred_country, pred_city, true_country, true_city, rule),
        }
        for rule in RULES
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    for rule, r in result.items():
        click.echo(
            f"{rule:>8}: country {'yes' if r['country'] else 'no ':3}  city {'yes' if r['city'] else 'no ':3}"
            f"  R_geo {r['r_geo']:.1f}"
        )


if __name__ == "__main__":
    main()
