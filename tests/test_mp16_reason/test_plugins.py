"""The registry behind teachers, sources, filters and rewards, met as a plugin meets it: a package installed on
the path with an entry point, read in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mp16_reason.plugins import Registry, kind_of

ROOT = Path(__file__).resolve().parents[2]


def install(site: Path, group: str, points: dict[str, str]) -> None:
    """A distribution as an installer leaves it: a module, and a dist-info folder with its entry points."""
    (site / "geo_plugin.py").write_text("def reward(completions, **kwargs):\n    return [0.5] * len(completions)\n")
    info = site / "geo_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: geo-plugin\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {value}" for name, value in points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")


def test_an_installed_reward_is_nameable_and_a_shipped_name_keeps_its_meaning(tmp_path):
    install(tmp_path, "globe_train.rewards", {"steady": "geo_plugin:reward", "geo_accuracy": "geo_plugin:reward"})
    code = """
import warnings
from types import SimpleNamespace
from globe_train.rewards import SHIPPED, rewards
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    known = rewards()
assert known["geo_accuracy"] is SHIPPED["geo_accuracy"], "an entry point replaced a shipped reward"
assert [str(w.message) for w in caught if "geo_accuracy" in str(w.message)], "no warning for the reused name"
print(known["steady"](SimpleNamespace(), 4)(completions=["a", "b"]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[0.5, 0.5]"


def test_items_are_named_by_themselves_or_by_the_caller():
    named = Registry("test.none", name_of=lambda item: item.upper(), shipped=["a"])
    assert named.register("b") == "b" and list(named.items()) == ["A", "B"]
    anonymous: Registry[int] = Registry("test.none", shipped={"one": 1})
    with pytest.raises(ValueError, match="give the name"):
        anonymous.register(2)
    anonymous.register(2, "two")
    assert anonymous.items() == {"one": 1, "two": 2}


def test_a_settings_class_without_a_kind_default_is_refused_by_name():
    from typing import Literal

    from pydantic import BaseModel

    class Mine(BaseModel):
        kind: Literal["mine"] = "mine"

    class Nameless(BaseModel):
        kind: str

    assert kind_of(Mine) == "mine"
    with pytest.raises(ValueError, match="Nameless: give its kind field a default"):
        kind_of(Nameless)


def test_the_four_registries_have_one_shape():
    """register, kinds() (name -> kind, in the order tried) and a resolver, in each."""
    from builders.curation import filters
    from builders.sources import kinds as source_kinds
    from builders.teachers import registry as teachers
    from globe_train import rewards

    for module in (teachers, filters, rewards):
        assert callable(module.register) and isinstance(module.kinds(), dict)
    assert list(source_kinds())[-1] == "folder"  # the catch-all, tried last
    assert all(isinstance(name, str) for name in source_kinds())
    assert {"openai", "geoclip"} <= set(teachers.kinds()) and "geo_accuracy" in rewards.kinds()
