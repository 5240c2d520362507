import io
import json
import re
import tarfile

import datasets
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mp16_reason import schema


def _record(**kw):
    base = {"id": "2a/0f/3241572013.jpg", "lat": 48.8584, "lon": 2.2945}
    base.update(kw)
    return base


def test_defaults_fill_every_field_with_its_type():
    data = json.loads(schema.to_json_bytes(_record()))
    assert list(data) == list(schema.Sample.model_fields)
    assert data["city"] == "" and data["entities"] == [] and data["teachers"] == []
    assert data["geonames_id"] is None and data["localizable"] is None


def test_round_trip():
    rec = _record(
        country="France",
        country_code="FR",
        city="Paris",
        geonames_id=2988507,
        localizable=True,
        localizability=0.93,
        reasoning="Wrought-iron lattice tower ...",
        entities=[{"text": "lattice tower", "category": "landmark", "grounded": True}],
        teachers=[
            {
                "teacher": "qwen72b",
                "model": "Qwen/Qwen2.5-VL-72B-Instruct",
                "parsed": True,
                "country": "France",
                "city": "Paris",
                "input_tokens": 812,
                "output_tokens": 240,
            }
        ],
        source={"labels": {"city": "Paris", "country": "France"}},
        split="train",
    )
    sample = schema.from_json_bytes(schema.to_json_bytes(rec))
    assert sample.entities[0].grounded is True
    assert sample.teachers[0].output_tokens == 240
    assert schema.to_json_bytes(sample) == schema.to_json_bytes(rec)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"lat": 91}, "lat"),
        ({"lon": "east"}, "lon"),
        ({"id": ""}, "id"),
        ({"country_code": "FRA"}, "country_code"),
        ({"localizability": 1.5}, "localizability"),
        ({"split": "dev"}, "split"),
        ({"colour": "red"}, "colour"),
        ({"entities": [{"category": "x"}]}, "entities.0.text"),
    ],
)
def test_validation_names_the_field(override, field):
    with pytest.raises(schema.SchemaError) as err:
        schema.validate(_record(**override))
    assert field in str(err.value)


def test_keys_are_dot_free_and_features_cover_the_schema():
    assert all("." not in k for k in schema.field_names())
    feats = schema.features()
    assert set(feats["json"]) == set(schema.Sample.model_fields)
    assert feats["json"]["geonames_id"] == datasets.Value("int64")
    assert feats["json"]["entities"] == datasets.List(
        {"text": datasets.Value("string"), "category": datasets.Value("string"), "grounded": datasets.Value("bool")}
    )


def test_teacher_schema_is_strict():
    s = schema.teacher_reply_schema()
    assert s["additionalProperties"] is False
    assert set(s["required"]) == set(s["properties"])
    entity = s["$defs"]["TeacherEntity"]
    assert entity["additionalProperties"] is False and set(entity["required"]) == {"text", "category"}
    # Nullable coordinates stay typed numbers.
    assert {"type": "null"} in s["properties"]["lat"]["anyOf"]
    schema.TeacherReply.model_validate(
        {
            "localizable": True,
            "localizability": 0.8,
            "reasoning": "r",
            "entities": [],
            "country": "Peru",
            "city": "Cusco",
            "lat": None,
            "lon": None,
        }
    )


def test_nulls_in_first_rows_do_not_change_types(tmp_path):
    """Declared features keep a column's type even when the first samples hold nulls."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="JPEG")
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(8):
            rec = (
                _record(id=f"img{i}")
                if i < 6
                else _record(
                    id=f"img{i}", geonames_id=123, localizable=True, entities=[{"text": "sign", "grounded": False}]
                )
            )
            for ext, data in (("jpg", buf.getvalue()), ("json", schema.to_json_bytes(rec))):
                info = tarfile.TarInfo(f"sample{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": str(shard)},
        split="train",
        features=schema.features(),
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds.features["json"]["geonames_id"] == datasets.Value("int64")
    assert ds[7]["json"]["geonames_id"] == 123 and ds[0]["json"]["geonames_id"] is None
    assert ds[7]["json"]["entities"][0]["text"] == "sign"


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.one_of(st.none(), st.floats(0, 20_000)),
    st.one_of(st.none(), st.floats(0, 1)),
    st.text(max_size=30),
)
@example(0.0, 0.0, None, None, ' "')  # a quote in a city: escaped in the JSON, so not its text as given
def test_json_member_reads_back_as_pythons_json_of_the_record(lat, lon, km, score, city):
    """The member pydantic writes against json.dumps of model_dump, the way it was written before: the same
    text but for small numbers' notation, and the same values read back."""
    rec = schema.validate(_record(lat=lat, lon=lon, city=city, city_distance_km=km, localizability=score))
    ours = schema.to_json_bytes(rec)
    reference = json.dumps(rec.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert json.loads(ours) == json.loads(reference)
    # compact: no space outside the string literals (a city's own text may hold spaces and escaped quotes)
    assert b" " not in re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', ours) and ours.decode("utf-8")
    if all(v is None or v == 0 or abs(v) >= 1e-4 for v in (lat, lon, km, score)):
        assert ours == reference.encode("utf-8")


def test_json_member_refuses_nan():
    rec = schema.validate(_record())
    with pytest.raises(ValidationError):
        rec.lat = float("nan")
