"""The catalog: finished images read from a manifest, streamed, filtered."""

import pytest

from farm import catalog
from farm.catalog import CatalogError, Entry, Where
from farm.manifest import Manifest
from farm.outputs import RunFolder
from tests.helpers import make_job
from tests.helpers import result


def entry(**params) -> Entry:
    base = {"prompt": "a red fox", "seed": 1, "cfg": 7.0, "checkpoint": "tiny", "vae": None,
            "width": 64, "height": 96}
    return Entry(seq=0, id="x", path="images/00000/x.png", pixel_hash="f" * 64,
                 params={**base, **params}, row={})


@pytest.mark.parametrize("where, matches", [
    (["cfg=7"], True), (["cfg=7.0"], True), (["cfg=5"], False),
    (["prompt~FOX"], True), (["prompt~owl"], False), (["prompt=a red fox"], True),
    (["seed!=1"], False), (["seed!=2"], True), (["vae=none"], True), (["size=64x96"], True),
    (["seed=0", "seed=1"], True),  # one field twice: either value
    (["seed=1", "cfg=5"], False),  # two fields: both
    (["values.animal=fox"], True), (["values.animal=cat"], False),
    (["fields.mood=calm"], False),
    (["cfg>=7"], True), (["cfg>7"], False), (["cfg<7.5"], True), (["cfg<=6.9"], False),
    (["cfg>=5", "cfg<=7"], True), (["cfg>=5", "cfg<6"], False),  # bounds: all hold
    (["seed>0", "seed<2"], True), (["seed>=18446744073709551615"], False),
    (["fields.score>=0.5"], True), (["fields.score<0.5"], False),
    (["values.n>1"], False),  # text that is no number: no match
])
def test_where_matches_like_a_user_reads_it(where, matches):
    assert Where.parse(where).matches(entry(values={"animal": "fox", "n": "many"},
                                            fields={"score": "0.75"})) == matches


@pytest.mark.parametrize("text, problem", [
    ("colour=red", "unknown field 'colour'"), ("seed", "expected FIELD=VALUE"),
    ("values=cat", "unknown field 'values'"),
    ("cfg>=high", "'high' is not a number"), ("prompt>=5", "prompt is not a number; compare"),
    ("size<512", "size is not a number"), ("beauty<0.5", "unknown field 'beauty'"),
])
def test_bad_filters_say_what_is_allowed(text, problem):
    with pytest.raises(CatalogError, match=problem):
        Where.parse([text])


def test_entries_stream_done_rows_in_file_order(tmp_path, tiny):
    folder = RunFolder(tmp_path)
    jobs = [make_job(tiny, seed=s) for s in range(4)]
    with Manifest(folder.manifest) as m:
        paths = m.claim(jobs, folder.image_path, run_id=1)
        m.record([result(j, p, ok=j.seed != 2) for j, p in zip(jobs, paths)], run_id=1)
    found = list(catalog.entries(tmp_path))
    assert [e.params["seed"] for e in found] == [0, 1, 3]
    assert [e.path for e in found] == [paths[0], paths[1], paths[3]]
    assert [e.params["seed"] for e in catalog.entries(tmp_path, Where.parse(["seed!=0"]))] \
        == [1, 3]
    with pytest.raises(CatalogError, match="not a run folder"):
        list(catalog.entries(tmp_path / "nothing"))


def test_a_sample_is_the_same_images_every_time_in_file_order(finished_run):
    import random

    everything = list(catalog.entries(finished_run))
    # unfiltered, from the file numbers alone: the images a draw from every entry gives
    drawn = sorted(random.Random(0).sample(everything, 5), key=lambda e: e.seq)
    assert catalog.sample(finished_run, Where(), 5) == drawn
    assert catalog.sample(finished_run, Where(), 50) == everything
    assert catalog.sample(finished_run, Where(), 0) == []
    # filtered: one pass keeping the sample
    where = Where.parse(["cfg=7"])
    chosen = catalog.sample(finished_run, where, 4)
    assert chosen == catalog.sample(finished_run, where, 4)
    assert len(chosen) == 4 and all(e.params["cfg"] == 7 for e in chosen)
    assert [e.seq for e in chosen] == sorted(e.seq for e in chosen)
    assert catalog.sample(finished_run, where, 50) == [e for e in everything
                                                       if e.params["cfg"] == 7]
