"""meta.json, typed: what a run is, where it ran and how it ended.

`RunMeta` is the record; `read_meta` its one reader and `RunWriter.write_meta` (write.py)
its one writer, so `sweep`, `merge` and the rounds that `ab` assembles build and read the
same fields. The file is a flat JSON object: the environment fingerprint's keys
(`measure.envinfo.fingerprint`: versions, device, CPU, command) beside this record's fields,
so a reader that wants the document as it is on disk (the report's and compare's environment
checks) takes `as_dict()`. Keys this version does not know are kept in `environment` and
written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlabench.errors import UsageError


@dataclass
class RunMeta:
    """One run directory's meta.json. Fields left None are not written."""

    # The fingerprint taken when the run started (and any key a newer mlabench wrote).
    environment: dict[str, Any] = field(default_factory=dict)
    # What was run: the suite, its settings, this shard's case count and the run record that
    # `--resume` checks (suite, overrides, options, shard, hashes of the case list and grid).
    suite: str | None = None
    suite_path: str | None = None
    shard: str | None = None
    settings: dict[str, Any] | None = None
    cases: int | None = None
    run: dict[str, Any] | None = None
    # The tensor-parallel degrees the cases run at and the torch.distributed backends joining their ranks.
    tensor_parallel: dict[str, Any] | None = None
    # Where and how it was measured.
    peaks: dict[str, Any] | None = None
    executor: str | None = None
    devices: dict[str, Any] | None = None  # device name -> fingerprint, each kind the cases ran on
    # How it went.
    resumed_utc: str | None = None
    finished_utc: str | None = None
    interrupted: bool | None = None
    device_lost: str | None = None
    # merge: the run directories it joined and their shards; partial or mixed suites allowed.
    merged_from: list[str] | None = None
    shards: list[Any] | None = None
    partial: bool | None = None
    mixed: bool | None = None
    # ab: rounds joined into this run, and the job that ran them.
    rounds: int | None = None
    ab: dict[str, Any] | None = None

    @property
    def created_utc(self) -> str | None:
        return self.environment.get("created_utc")

    @property
    def device_name(self) -> str | None:
        device = self.environment.get("device")
        return device.get("name") if isinstance(device, dict) else None

    @property
    def finished(self) -> bool:
        """Whether the run ended by itself (not killed, not interrupted)."""
        return self.finished_utc is not None and self.interrupted is not True

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> RunMeta:
        names = {f.name for f in dataclasses.fields(cls)} - {"environment"}
        return cls(environment={k: v for k, v in document.items() if k not in names},
                   **{k: v for k, v in document.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        """The JSON document: the environment's keys, then every field that is set."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "environment"}
        return {**self.environment, **{k: v for k, v in fields.items() if v is not None}}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False, default=str) + "\n"


def read_meta(path: Path) -> RunMeta | None:
    """The meta.json at `path`; None when absent; UsageError naming the file when it is not a
    JSON object. The one reader of meta.json: resume, merge, rounds, report and compare."""
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: corrupt JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected a JSON object at the top level")
    return RunMeta.from_dict(document)
