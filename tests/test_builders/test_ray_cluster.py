"""Builds across a real two-node Ray cluster on one machine (``ray.cluster_utils.Cluster``: a head and a second
node, each a raylet of its own), with every input and output on a real S3 server, so no node reads another's
disk: units forced onto the second node by a custom resource, and that node killed mid-build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import sample_recipe
from image_server import SlowImages, url_metadata
from s3_server import rclone, upload

from builders.build import build
from mp16_reason.storage import Location

pytestmark = [
    pytest.mark.skipif(rclone() is None, reason="rclone not installed: run scripts/setup.sh"),
    pytest.mark.slow,
]
pytest.importorskip("s3fs")
pytest.importorskip("ray")

SECOND = {"second": 1.0}  # the custom resource only the second node (and its replacement) offers


@pytest.fixture(scope="module")
def cluster(s3):
    """A head node and nothing else yet; tests add the second node. Started after the S3 server, so every
    raylet, and so every worker, has the storage credentials in its environment, as a real node would."""
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 80 * 1024 * 1024}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **small})
    try:
        yield c
    finally:
        c.shutdown()


def _ray_build(recipe: dict, tmp_path: Path, cluster, name: str) -> subprocess.Popen:
    """``mp16-reason build RECIPE --distributor ray`` as its own driver process, joining the cluster."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it; closed with the test's tmp
    return subprocess.Popen(
        [sys.executable, "-m", "builders.cli", "build", str(path), "--distributor", "ray", "--quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _shards(out: str | Path) -> list[dict]:
    return json.loads((Location(str(out)) / "manifest.json").read_text())["shards"]


def _recipe_dict(recipe) -> dict:
    data = recipe.model_dump(mode="json", exclude_defaults=True)
    data["ray"] = {"resources": SECOND}  # every unit needs what only the second node has
    return data


def test_units_on_the_second_node_write_to_s3_and_match_the_local_build(s3, cluster, sample_input, tmp_path):
    node = cluster.add_node(num_cpus=1, resources=SECOND, object_store_memory=80 * 1024 * 1024)
    try:
        prefix = s3.bucket("ray-inputs") + "/sample"
        upload(sample_input, prefix)
        local = tmp_path / "local"
        build(sample_recipe(sample_input, local), progress=False)
        out = s3.bucket("ray-builds") + "/sample"
        remote = sample_recipe(
            sample_input, out, **{"input.metadata": prefix + "/metadata.csv", "input.images": prefix + "/images"}
        )
        proc = _ray_build(_recipe_dict(remote), tmp_path, cluster, "sample")
        assert proc.wait(300) == 0, (tmp_path / "sample.log").read_text()[-3000:]
        assert _shards(out) == _shards(local)  # paths, sizes and sha256 of every shard
        assert (s3.root / "ray-builds/sample/.work/units").is_dir()  # the remote units went to the object store
    finally:
        cluster.remove_node(node)


def test_a_node_killed_mid_build_gives_the_uninterrupted_shards(s3, cluster, sample_input, tmp_path):
    with SlowImages(sample_input / "images") as base:
        url_metadata(sample_input, base, tmp_path / "urls")
        prefix = s3.bucket("ray-inputs") + "/urls"
        upload(tmp_path / "urls", prefix)
        settings = {"input.metadata": prefix + "/metadata.csv", "input.images": [], "unit_size": 4, "fetch.threads": 1}
        reference = tmp_path / "uninterrupted"
        build(sample_recipe(sample_input, reference, **settings), progress=False)

        node = cluster.add_node(num_cpus=1, resources=SECOND, object_store_memory=80 * 1024 * 1024)
        out = s3.bucket("ray-builds") + "/killed"
        proc = _ray_build(_recipe_dict(sample_recipe(sample_input, out, **settings)), tmp_path, cluster, "killed")
        first = s3.root / "ray-builds/killed/.work/units/unit-000000.arrow"
        deadline = time.monotonic() + 180
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.exists() and proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        units = len(list(first.parent.glob("unit-*.arrow")))
        cluster.remove_node(node)  # the second node dies with a unit in flight
        replacement = cluster.add_node(num_cpus=1, resources=SECOND, object_store_memory=80 * 1024 * 1024)
        try:
            assert proc.wait(300) == 0, (tmp_path / "killed.log").read_text()[-3000:]
        finally:
            cluster.remove_node(replacement)
        total = len(list(first.parent.glob("unit-*.arrow")))
        assert units < total  # the node died before the build's units were all done
        assert _shards(out) == _shards(reference)
