"""Which planned jobs a run folder has finished: manifest row done, and the file there."""

import pytest

from farm import finished
from farm.finished import Finished
from farm.manifest import Manifest
from farm.outputs import RunFolder
from tests.helpers import make_job
from tests.helpers import CKPT, result


@pytest.mark.parametrize("whole", [0, 1000])
def test_each_job_gets_its_state(tmp_path, monkeypatch, whole):
    monkeypatch.setattr(finished, "WHOLE", whole)
    folder = RunFolder(tmp_path)
    jobs = [make_job(CKPT, seed=s) for s in range(6)]
    with Manifest(folder.manifest) as m:
        paths = m.claim(jobs[:5], folder.image_path, run_id=1)
        m.record([result(jobs[0], paths[0]), result(jobs[1], paths[1]),
                  result(jobs[2], paths[2], ok=False)], run_id=1)
        for path in paths[:1]:  # job 1's file is gone; 3 and 4 are still queued
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"png")
        states = [s for _, s, _ in Finished(folder, m).mark(jobs)]
        assert states == ["done", "pending", "failed", "pending", "pending", "pending"]
        assert [j for j, _ in Finished(folder, m).pending(jobs)] == jobs[1:]
        assert not Finished(folder, m).all_done(jobs) and Finished(folder, m).all_done(jobs[:1])
        # for the run that has handed job 0 out itself, it is not finished: claim decides
        m.claim(jobs[:1], folder.image_path, run_id=2)
        m.record([result(jobs[0], paths[0])], run_id=2)
        assert [s for _, s, _ in Finished(folder, m, run_id=2).mark(jobs[:1])] == ["pending"]
        assert [s for _, s, _ in Finished(folder, m, run_id=3).mark(jobs[:1])] == ["done"]
    assert [s for _, s, _ in Finished(folder, None).mark(jobs[:2])] == ["pending", "pending"]


@pytest.mark.parametrize("whole", [0, 1000])  # looked up in chunks, or read at once
def test_many_folders_and_chunks_give_the_same_answer(tmp_path, monkeypatch, whole):
    monkeypatch.setattr(finished, "WHOLE", whole)
    monkeypatch.setattr(finished, "CHUNK", 7)
    monkeypatch.setattr(finished, "LISTINGS", 2)  # listings evicted and read again
    folder = RunFolder(tmp_path)
    jobs = [make_job(CKPT, seed=s) for s in range(40)]
    with Manifest(folder.manifest) as m:
        paths = m.claim(jobs, lambda seq, job: f"images/{seq % 5:05d}/{seq}.png", run_id=1)
        m.record([result(j, p) for j, p in zip(jobs, paths)], run_id=1)
        for n, path in enumerate(paths):
            if n % 3:
                (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / path).write_bytes(b"png")
        states = [s for _, s, _ in Finished(folder, m).mark(jobs)]
    assert states == ["done" if n % 3 else "pending" for n in range(40)]
