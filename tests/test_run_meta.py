"""meta.json's typed record: what the writers set reads back the same, and keys it does not
know (a newer mlabench's) survive a rewrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlabench import schema
from mlabench.errors import UsageError
from mlabench.rundir import RunMeta, RunWriter, read_meta


def test_written_meta_reads_back_typed_and_keeps_unknown_keys(tmp_path: Path) -> None:
    env = {"mlabench_version": "9.9", "created_utc": "2026-01-01T00:00:00+00:00", "device": {"name": "GPU-X"},
           "torch": "2.13", "from_the_future": {"a": [1, 2]}}
    meta = RunMeta(environment=env, suite="smoke", cases=3, run={"cases_sha1": "abc"}, interrupted=False)
    with RunWriter(tmp_path / "run", resume=False) as writer:
        writer.write_meta(meta)
    on_disk = json.loads((tmp_path / "run" / schema.META_JSON).read_text())
    assert on_disk["from_the_future"] == {"a": [1, 2]} and on_disk["suite"] == "smoke"
    assert "finished_utc" not in on_disk and on_disk["interrupted"] is False  # unset fields are not written
    back = read_meta(tmp_path / "run" / schema.META_JSON)
    assert back == meta
    assert back.device_name == "GPU-X" and back.created_utc == env["created_utc"] and not back.finished
    back.finished_utc = "2026-01-01T00:01:00+00:00"
    assert back.finished and back.as_dict()["from_the_future"] == {"a": [1, 2]}


def test_meta_that_is_not_a_json_object_is_one_usage_error(tmp_path: Path) -> None:
    path = tmp_path / schema.META_JSON
    assert read_meta(path) is None
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="JSON object"):
        read_meta(path)
    path.write_text("{")
    with pytest.raises(UsageError, match="corrupt JSON"):
        read_meta(path)
