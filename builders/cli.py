"""The ``mp16-reason`` command line: the commands that build, check and publish a dataset, added to the
group of ``mp16_reason.cli`` (which holds what needs only the consumer package)."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path

import click

from mp16_reason.cli import main


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--sample", is_flag=True, help="Build the embedded offline sample (drawn scenes at real MP-16 coordinates)."
)
@click.option("--sample-size", default=200, show_default=True, help="Images in the sample (at most 240).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (shards, manifest, rejections).")
@click.option("--metadata", type=click.Path(dir_okay=False), help="Override input.metadata.")
@click.option(
    "--images",
    multiple=True,
    help="Override input.images; repeat for several sources, tried in order: a folder, a .tar or .zip archive, "
    "a .csv URL list (id, url).",
)
@click.option(
    "--join", multiple=True, help="Override input.join: a metadata file that gives the coordinates, by id; repeatable."
)
@click.option("--no-join", is_flag=True, help="Set input.join to none: the metadata has its own coordinates.")
@click.option("--limit", type=int, help="Use only the first N metadata rows.")
@click.option("--workers", type=int, help="Worker processes (or Ray CPUs).")
@click.option("--distributor", type=click.Choice(["local", "ray"]), help="Where units run.")
@click.option("--unit-size", type=int, help="Rows per unit of work (the resume granularity).")
@click.option("--shard-bytes", type=int, help="Upper bound of a shard's size in bytes.")
@click.option("--test-fraction", type=float, help="Share of samples in the test split.")
@click.option("--hold-out-cities/--no-hold-out-cities", default=None, help="Keep whole cities out of train.")
@click.option(
    "--group-by",
    type=click.Choice(["near_duplicate", "author"]),
    multiple=True,
    help="Keep near twins (near_duplicate) or each author's photos (author) in one split; repeatable.",
)
@click.option("--max-pixels", type=int, help="Resize budget in pixels.")
@click.option("--jpeg-quality", type=int, help="JPEG quality of the re-encoded images.")
@click.option("--resample", help="Downscaling filter: box (area average, the default), bilinear, bicubic, ...")
@click.option("--teacher-cache", type=click.Path(dir_okay=False), help="Teacher reply cache (SQLite) to use.")
@click.option("--offline", is_flag=True, default=None, help="Send no teacher request; use cached replies only.")
@click.option(
    "--estimate",
    is_flag=True,
    help="Prepare the images, then print the teacher requests, tokens and cost the build would spend (batch "
    "teachers at their batch price); send nothing.",
)
@click.option("--overwrite", is_flag=True, help="Delete a build of a different recipe found in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build(
    recipe: str | None,
    sample: bool,
    sample_size: int,
    out: str | None,
    quiet: bool,
    overwrite: bool,
    estimate: bool,
    **flags,
) -> None:
    """Build MP16-Reason shards from image metadata and images.

    \b
    RECIPE is a YAML file holding every setting (see builders/recipes/); flags override it.
    Re-running the same command resumes an interrupted build and leaves a finished one alone.
    \b
    Examples:
      mp16-reason build --sample --out sample-build          # offline, no GPU, ~10 s
      mp16-reason build builders/recipes/mp16pro.yaml --out /data/mp16-reason --workers 16
      mp16-reason build my.yaml --distributor ray             # units as Ray tasks
      mp16-reason build builders/recipes/globe-release.yaml --metadata mp16-reason-train.csv \
          --images mp16-reason-train-images.zip --images mp-16-images.tar --images mp16-urls.csv
    """
    if quiet:
        quiet_libraries()  # before the fork server starts: its workers inherit its warning filters
    from builders.plane.distributor import warm_up

    # The workers' and shard writer's fork server starts first: its imports (~1 s) then overlap ours and the
    # recipe's, and the build's first units start that much sooner.
    warm_up()
    from builders.recipe import RecipeError, load_recipe

    overrides = {
        "input.metadata": flags["metadata"],
        "input.images": list(flags["images"]) or None,
        "input.join": [] if flags.pop("no_join") else list(flags["join"]) or None,
        "limit": flags["limit"],
        "workers": flags["workers"],
        "distributor": flags["distributor"],
        "unit_size": flags["unit_size"],
        "shards.max_bytes": flags["shard_bytes"],
        "split.test_fraction": flags["test_fraction"],
        "split.hold_out_cities": flags["hold_out_cities"],
        "split.group_by": list(flags["group_by"]) or None,
        "image.max_pixels": flags["max_pixels"],
        "image.jpeg_quality": flags["jpeg_quality"],
        "image.resample": flags["resample"],
        "distill.cache": flags["teacher_cache"],
        "distill.offline": flags["offline"],
        "out": out,
    }
    if sample:
        if recipe:
            raise click.UsageError("give a RECIPE or --sample, not both")
        from importlib import resources

        from builders.sample.scenes import write_sample
        from mp16_reason.storage import is_url

        target = out or "sample-build"
        # The drawn inputs go beside a local output, and into the local cache for one on object storage: the
        # build reads them as it reads any input (their content, not their place, names them in the recipe).
        if is_url(target):
            from mp16_reason.gazetteer import cache_dir

            inputs = cache_dir() / f"sample-input-{sample_size}"
        else:
            inputs = Path(target) / "sample-input"
        recipe = str(resources.files("builders.recipes").joinpath("sample.yaml"))
        overrides.update(
            {
                "input.metadata": str(inputs / "metadata.csv"),
                "input.images": str(inputs / "images"),
                "out": target,
                # The authored teacher replies go into a cache of the sample's own, never the user's.
                "distill.cache": str(inputs / "teacher-cache.sqlite"),
                "distill.import_cache": str(inputs / "teacher-cache.jsonl"),
            }
        )
    elif not recipe and not flags["metadata"]:
        raise click.UsageError("give a RECIPE file, --metadata with --images, or --sample")
    try:
        rec = load_recipe(recipe, overrides)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None
    from builders.preflight import check_extras

    check_extras(rec)  # before anything is drawn or written
    if sample and not (inputs / "metadata.csv").exists():
        click.echo(f"drawing {sample_size} sample images into {inputs} ...")
        write_sample(inputs, sample_size)
    if sample and not (inputs / "teacher-cache.jsonl").exists():
        from builders.sample.replies import write_cache

        write_cache(inputs, rec)
    from builders.build import BuildError
    from builders.build import build as run_build
    from builders.build import estimate as run_estimate

    try:
        if estimate:
            for line in run_estimate(rec, overwrite=overwrite, progress=not quiet):
                click.echo(line)
            return
        summary = run_build(rec, overwrite=overwrite, progress=not quiet)
    except (BuildError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in summary.lines():
        click.echo(line)


def quiet_libraries() -> None:
    """``--quiet``: no library warnings either, in this process and in the workers it starts; the build's own
    warnings (:class:`builders.stops.BuildWarning`) still show."""
    import os
    import warnings

    from builders.stops import BuildWarning

    os.environ["PYTHONWARNINGS"] = "ignore"  # read by each worker's interpreter as it starts
    warnings.simplefilter("ignore")
    warnings.simplefilter("default", BuildWarning)  # what the user should act on is never hidden
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class BuildFolder(click.ParamType):
    """A finished build: a local folder, or a URL (s3://bucket/prefix, gs://..., hf://datasets/...)."""

    name = "DIRECTORY"

    def convert(self, value, param, ctx):
        if "://" in str(value) and not str(value).startswith("file://"):
            return str(value)
        return click.Path(exists=True, file_okay=False).convert(str(value).removeprefix("file://"), param, ctx)


BUILD = BuildFolder()


@main.command()
@click.argument("directory", type=BUILD)
@click.option("--repo", default=None, help="Repository id used in the usage snippets (default globe/mp16-reason).")
def card(directory: str, repo: str | None) -> None:
    """Render the dataset card DIRECTORY/README.md from a finished build.

    \b
    The YAML front matter declares every config and split (`configs`) and the record's types
    (`dataset_info.features`, from the schema), so `load_dataset` needs no loading script and infers nothing.
    The body holds the build's recipe, filters with counts, statistics and a world map (assets/world_map.png).
    """
    from builders.publish.card import write_card
    from mp16_reason.hub import REPO_ID

    try:
        path = write_card(directory, repo or REPO_ID)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--against",
    "against",
    multiple=True,
    metavar="[NAME=]PATH[,IMAGES]",
    help="Also look for the build's photos here (repeatable): another build, a folder or .tar of images, "
    "or a benchmark CSV (IMG_ID,...) with its images after a comma, e.g. "
    "im2gps3k=im2gps3k_places365.csv,im2gps3ktest.",
)
@click.option("--max-phash", type=int, help="Near-duplicate pHash distance (default: the build's recipe, 10).")
@click.option("--max-dhash", type=int, help="Near-duplicate dHash distance (default: the build's recipe, 12).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def audit(directory: str, against: tuple[str, ...], max_phash: int | None, max_dhash: int | None, quiet: bool) -> None:
    """Find the photos a build holds twice, across its splits, and the benchmark photos it already holds.

    \b
    Pairs are exact (same bytes), near (perceptual hashes: resized, re-encoded, cropped up to ~10 %,
    brightened, watermarked copies), same-photo (the same Flickr photo id) or same-author, within train,
    within test, train-test, and between each split and every --against set. Writes DIRECTORY/audit.json
    (summary and pairs) and DIRECTORY/audit-pairs.parquet; `mp16-reason card` then reports them.
      mp16-reason audit mp16-reason
      mp16-reason audit mp16-reason --against im2gps3k=im2gps3k_places365.csv,im2gps3ktest \\
          --against yfcc4k=yfcc4k.csv,yfcc4k_images --against mp16-reason-test
    """
    from mp16_reason.cli import require

    require("faiss")
    from builders.audit.audit import AuditError, against_side, build_side, lines, summary, write
    from mp16_reason.manifest import read_manifest

    try:
        thresholds = read_manifest(directory).recipe.get("audit") or {}
        p = max_phash if max_phash is not None else thresholds.get("max_phash", 10)
        d = max_dhash if max_dhash is not None else thresholds.get("max_dhash", 12)
        side = build_side(directory)
        others = [against_side(spec, progress=not quiet) for spec in against]
        from builders.audit.audit import audit as run

        found = run(side, others, p, d, progress=not quiet)
    except (AuditError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    info = summary(found, side, others, p, d)
    json_path, pairs_path = write(directory, found, info)
    for line in lines(info):
        click.echo(line)
    click.echo(f"wrote {json_path} and {pairs_path}")


@main.command("validate")
@click.argument("directory", type=BUILD)
@click.option("--no-card", is_flag=True, help="Do not require README.md (checked anyway when present).")
def validate_cmd(directory: str, no_card: bool) -> None:
    """Check a build or a downloaded copy: shards against manifest.json, records against the schema, the card.

    Exits with status 1 and lists every problem when anything is off.
    """
    from builders.publish.validate import ValidationFailed, validate_build

    try:
        summary = validate_build(directory, require_card=not no_card)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    except ValidationFailed as exc:
        raise click.ClickException(f"{directory} is not valid: {exc}") from None
    splits = ", ".join(f"{k} {v:,}" for k, v in sorted(summary["splits"].items()))
    click.echo(f"{directory} is valid: {summary['shards']} shard(s), {summary['samples']:,} samples ({splits})")


@main.command()
@click.argument("directory", type=BUILD)
@click.option("--repo", required=True, help="Dataset repository, e.g. globe/mp16-reason.")
@click.option("--revision", default=None, help="Branch to upload to (created if missing; default main).")
@click.option("--tag", default=None, help="Tag the uploaded commit, e.g. v0.1.0 (default: v<dataset version>).")
@click.option("--no-tag", is_flag=True, help="Do not tag the release.")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--dry-run", is_flag=True, help="Stage the exact repository tree locally and list it; upload nothing.")
@click.option("--staging", type=click.Path(file_okay=False), help="Where to stage (default DIR/.work/publish).")
def publish(
    directory: str,
    repo: str,
    revision: str | None,
    tag: str | None,
    no_tag: bool,
    private: bool,
    dry_run: bool,
    staging: str | None,
) -> None:
    """Validate a build, stage its repository tree, and upload it to the Hugging Face Hub.

    \b
    The token comes from HF_TOKEN or `hf auth login` and is never printed; HF_ENDPOINT selects a mirror.
    Re-running an interrupted upload resumes it. Run `mp16-reason card DIR` first.
    \b
    Examples:
      mp16-reason publish out/ --repo me/mp16-reason --dry-run
      mp16-reason publish out/ --repo globe/mp16-reason --tag v1.0
    """
    from builders.publish.upload import publish as run_publish
    from builders.publish.validate import ValidationFailed
    from mp16_reason.manifest import read_manifest

    try:
        version = read_manifest(directory).version
        plan = run_publish(
            directory,
            repo,
            revision=revision,
            tag=None if no_tag else (tag or f"v{version}"),
            private=private,
            dry_run=dry_run,
            staging=staging,
        )
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    except ValidationFailed as exc:
        raise click.ClickException(f"{directory} is not valid, nothing was uploaded: {exc}") from None
    except Exception as exc:  # huggingface_hub's errors carry the server's message, never the token
        if isinstance(exc, (ValueError, OSError)) or type(exc).__module__.startswith(("huggingface_hub", "httpx")):
            raise click.ClickException(f"upload to {repo} failed: {exc}") from None
        raise
    for line in plan.lines():
        click.echo(line)
    if dry_run:
        click.echo("dry run: nothing was uploaded")
    else:
        from huggingface_hub import constants

        click.echo(f"uploaded to {constants.ENDPOINT}/datasets/{repo} (commit {plan.commit}, tag {plan.tag})")


@main.group()
def cache() -> None:
    """The teacher reply cache: every paid-for reply, keyed by image, prompt version, model and parameters.

    \b
    Export it to rebuild a dataset without the endpoints (import it, then build with --offline):
      mp16-reason cache export replies.jsonl
      mp16-reason cache import replies.jsonl --cache other.sqlite
    \b
    Run an open teacher offline over the requests a build still needs (vLLM's batch runner):
      mp16-reason cache export-requests my.yaml --out requests.jsonl
      vllm run-batch -i requests.jsonl -o results.jsonl --model Qwen/Qwen2.5-VL-72B-Instruct
      mp16-reason cache import-results results.jsonl
      mp16-reason build my.yaml --offline
    """


def _cache_option(f):
    return click.option(
        "--cache", "path", type=click.Path(dir_okay=False), help="Cache file (default: the builds' shared cache)."
    )(f)


@contextlib.contextmanager
def _open_cache(path: str | None):
    from builders.teachers.cache import ReplyCache, default_path

    c = ReplyCache(path or default_path())
    try:
        yield c
    finally:
        c.close()


@cache.command("export")
@click.argument("out", type=click.Path(dir_okay=False))
@_cache_option
def cache_export(out: str, path: str | None) -> None:
    """Write every cached reply to OUT as JSON Lines (no keys or URLs are in the cache)."""
    with _open_cache(path) as c:
        click.echo(f"exported {c.export(out):,} replies from {c.path} to {out}")


@cache.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@_cache_option
def cache_import(source: str, path: str | None) -> None:
    """Add the replies of an export to the cache (existing entries are kept)."""
    with _open_cache(path) as c:
        click.echo(f"imported {c.import_(source):,} new replies into {c.path} ({len(c):,} in all)")


@cache.command("export-requests")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "target", required=True, help="JSON Lines file of requests (a local path or a URL).")
@click.option("--build-out", help="The build folder whose prepared images are asked about (default: the recipe's out).")
@_cache_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def cache_export_requests(recipe: str, target: str, build_out: str | None, path: str | None, quiet: bool) -> None:
    """Write the request of every teacher reply RECIPE's build still lacks, as Batch API JSON Lines.

    \b
    Prepares the build's images first (the work is kept for the build itself). Each line is
    {"custom_id": <reply-cache key>, "method": "POST", "url": "/v1/chat/completions", "body": <the request an
    online build sends>}: the input of OpenAI's Batch API and of vLLM's offline batch runner:
      vllm run-batch -i requests.jsonl -o results.jsonl --model MODEL
    Then `mp16-reason cache import-results results.jsonl` and `mp16-reason build RECIPE --offline`. The cache
    remembers what each custom_id asks, so import into the same cache (--cache) that this read.
    """
    from builders.build import export_requests
    from builders.recipe import RecipeError, load_recipe

    try:
        rec = load_recipe(recipe, {"out": build_out, "distill.cache": path})
        lines = export_requests(rec, target, progress=not quiet)
    except (RecipeError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        click.echo(line)


@cache.command("import-results")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@_cache_option
def cache_import_results(results: str, path: str | None) -> None:
    """Add the replies of a batch results file (OpenAI Batch API output, or `vllm run-batch -o`) to the cache.

    Lines are matched by custom_id to the requests `cache export-requests` (or a batch build) wrote; failed lines
    are counted and left out, so a later build or export asks for them again.
    """
    from builders.teachers.batch import import_results

    with _open_cache(path) as c:
        imported, failed, unknown = import_results(results, c)
        click.echo(
            f"imported {imported:,} replies into {c.path}; {len(failed):,} failed, {unknown:,} not asked by this cache"
        )
        for key, reason in list(failed.items())[:5]:
            click.echo(f"  failed {key[:12]}: {reason}")


@cache.command("drop")
@click.option("--model", "models", multiple=True, help="Only replies of this teacher model (repeatable).")
@click.option(
    "--reason",
    type=click.Choice(["empty", "unparsed"]),
    help="Only replies that are empty, or that are not an answer in the prompt's format (empty included).",
)
@click.option("--key", "keys", multiple=True, help="Only the reply under this cache key (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would be dropped; drop nothing.")
@_cache_option
def cache_drop(
    models: tuple[str, ...], reason: str | None, keys: tuple[str, ...], dry_run: bool, path: str | None
) -> None:
    """Drop cached replies, so that the next build asks for them again.

    
    Replies that are no answer are never cached now; caches written before kept some. For example:
      mp16-reason cache drop --reason empty                     # every empty reply
      mp16-reason cache drop --model Qwen/Qwen2.5-VL-72B-Instruct --reason unparsed --dry-run
      mp16-reason cache drop --key 3f9a...                      # one reply (keys: cache export)
    The filters combine (a reply must match each one given); at least one is required.
    """
    from collections import Counter

    from builders.teachers.prompt import parse_reply

    if not (models or reason or keys):
        raise click.UsageError("give --model, --reason or --key (to drop every reply, delete the cache file)")

    def why(text: str) -> str | None:
        if not text.strip():
            return "empty"
        return "unparsed" if reason == "unparsed" and parse_reply(text).reply is None else None

    with _open_cache(path) as c:
        chosen: dict[str, tuple[str, str]] = {}
        for r in c:
            if (models and r.model not in models) or (keys and r.key not in keys):
                continue
            kind = why(r.text) if reason else "chosen"
            if kind is not None:
                chosen[r.key] = (r.model, kind)
        if not dry_run:
            c.drop(chosen)
        verb = "would drop" if dry_run else "dropped"
        click.echo(f"{verb} {len(chosen):,} replies from {c.path} ({len(c):,} left)")
        for (model, kind), n in sorted(Counter(chosen.values()).items()):
            click.echo(f"  {model} ({kind}): {n:,}")


@cache.command("info")
@_cache_option
def cache_info(path: str | None) -> None:
    """How many replies the cache holds, per model and prompt version."""
    from collections import Counter

    with _open_cache(path) as c:
        counts = Counter((r.model, r.prompt_version, r.origin) for r in c)
        click.echo(f"{c.path}: {len(c):,} replies")
        for (model, version, origin), n in sorted(counts.items()):
            click.echo(f"  {model} ({version}, {origin}): {n:,}")


def run() -> None:
    """The ``mp16-reason`` program: :func:`main`, then an exit that skips tearing down the interpreter.

    Freeing every object of pandas, pyarrow and datasets one by one takes ~0.4 s after a build has finished,
    for memory the system takes back at once. Output is flushed and exit handlers run first (logging, the
    process pools', Ray's), as in a normal exit. Tests call :func:`main`, which exits the usual way.
    """
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if not isinstance(code, int):  # a message (sys.exit("...")) is printed and exits 1, as Python does
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`) or stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
