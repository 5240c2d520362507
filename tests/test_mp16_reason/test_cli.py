import json
import subprocess
import sys

from click.testing import CliRunner

from builders.cli import main
from globe_train.cli import main as globe


def run(*args, app=main):
    return CliRunner().invoke(app, list(args))


def test_geocode_text_and_negative_coordinates():
    res = run("geocode", "-33.8568", "151.2153")
    assert res.exit_code == 0, res.output
    assert "Sydney" in res.output and "Australia" in res.output


def test_geocode_json_has_no_city_at_sea():
    res = run("geocode", "0", "-30", "--json")
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["city"] == "" and data["country"] == "" and data["geonames_id"] is None


def test_geocode_json_exact_distance():
    data = json.loads(run("geocode", "48.8584", "2.2945", "--json", "--exact").output)
    assert data["city"] == "Paris"
    assert abs(data["city_distance_km_geodesic"] - data["city_distance_km"]) < 0.05


def test_geocode_by_name():
    data = json.loads(run("geocode", "--name", "München, Germany", "--json").output)
    assert data["name"] == "Munich" and data["level"] == "city"
    assert json.loads(run("geocode", "--name", "Peking", "--json").output)["name"] == "Beijing"
    assert json.loads(run("geocode", "--name", "Nowhereville, Atlantis", "--json").output) is None
    res = run("geocode", "--name", "Nowhereville, Atlantis")
    assert res.exit_code != 0 and "no place called" in res.output


def test_geocode_bad_input_names_the_value():
    res = run("geocode", "95", "10")
    assert res.exit_code == 2 and "latitude 95.0 is outside" in res.output
    res = run("geocode", "abc", "10")
    assert res.exit_code == 2 and "'abc' is not a number" in res.output
    res = run("geocode", "10")
    assert res.exit_code == 2 and "LAT and LON" in res.output


def test_globe_match_compares_rules():
    res = run(
        "match",
        "--pred-country",
        "USA",
        "--pred-city",
        "NYC",
        "--true-country",
        "United States",
        "--true-city",
        "New York City",
        "--json",
        app=globe,
    )
    data = json.loads(res.output)
    assert data["alias"]["r_geo"] == 1.0 and data["official"]["r_geo"] == 0.0


def test_package_exports_load_on_first_use():
    """`import mp16_reason` (and so every CLI start) stays light; each public name still resolves."""
    code = (
        "import sys, mp16_reason\n"
        "assert 'pandas' not in sys.modules and 'scipy' not in sys.modules, 'heavy import at package import'\n"
        "missing = [n for n in mp16_reason.__all__ if getattr(mp16_reason, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert sorted(dir(mp16_reason)) == sorted(mp16_reason.__all__)\n"
        "try:\n"
        "    mp16_reason.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('unknown names must raise AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_program_exit_flushes_output_runs_exit_handlers_and_keeps_the_code():
    """``mp16-reason`` as a program ends without tearing the interpreter down; what a normal exit does still
    happens: output written, exit handlers run, the exit code kept."""
    program = (
        "import atexit, sys; atexit.register(lambda: print('handler ran', flush=True)); "
        "sys.argv = ['mp16-reason', *sys.argv[1:]]; from builders.cli import run; run()"
    )

    def program_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=120)

    done = program_run("geocode", "48.8584", "2.2945", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["city"] == "Paris"
    assert done.stdout.splitlines()[-1] == "handler ran"
    usage = program_run("build")
    assert usage.returncode == 2 and "RECIPE" in usage.stderr and "handler ran" in usage.stdout
    refused = program_run("geocode", "--name", "Zzzqxx, Nowhere")
    assert refused.returncode == 1 and "no place called" in refused.stderr and "handler ran" in refused.stdout
