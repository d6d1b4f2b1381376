"""The output folder's metadata: _job.json, _plan.json, _manifest/<shard>.json, _SUCCESS; readers trust only these."""

from __future__ import annotations

import json
import platform
import posixpath
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from jobs.fingerprint import digest
from jobs.redact import redact
from jobs.retry import RetryPolicy
from jobs.write import open_output_fs, retried, write_atomic

if TYPE_CHECKING:
    from jobs.plan import Plan
    from jobs.spec import JobSpec

JOB_FILE = "_job.json"
PLAN_FILE = "_plan.json"
MANIFEST_DIR = "_manifest"
ERRORS_DIR = "_errors"
DELETED_DIR = "_deleted"
SUCCESS_FILE = "_SUCCESS"

_PACKAGES = (
    "embedjob",
    "torch",
    "transformers",
    "tokenizers",
    "ray",
    "pyarrow",
    "datasets",
    "fsspec",
    "numpy",
)
# What must agree between an output's _job.json and a new run for the run to resume into it.
COMPATIBILITY_KEYS = ("weights_fingerprint", "settings_fingerprint", "spec_fingerprint", "plan_fingerprint")


class OutputConflict(RuntimeError):
    """The output already holds a different job (model, spec or input); names what differs."""


def part_name(index: int, shard_id: str) -> str:
    """The deterministic final name of a shard's data file."""
    return f"part-{index:05d}-{shard_id}.parquet"


class OutputStore:
    """One output folder on any fsspec filesystem, with retried reads and atomic writes."""

    def __init__(
        self, uri: str, storage_options: dict[str, Any] | None = None, policy: RetryPolicy | None = None
    ):
        self.uri = uri
        self.storage_options = storage_options or {}
        self.policy = policy or RetryPolicy()
        self.fs, self.root = open_output_fs(uri, self.storage_options)

    def path(self, rel: str) -> str:
        """Full path of a file inside the output."""
        return posixpath.join(self.root, rel)

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """A JSON file of the output, or None when it does not exist."""
        path = self.path(rel)

        def read() -> dict[str, Any] | None:
            try:
                with self.fs.open(path, "rb") as f:
                    return json.loads(f.read().decode("utf-8"))
            except FileNotFoundError:
                return None

        return retried(read, f"output {path}: read", self.policy, key=path)

    def write_json(self, rel: str, obj: Any) -> None:
        """Write a JSON file atomically (staged, then moved)."""
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8")
        write_atomic(self.fs, self.root, rel, data, self.policy, f"output {self.uri}")

    def exists(self, rel: str) -> bool:
        """Whether a file exists in the output."""
        path = self.path(rel)
        return retried(lambda: self.fs.exists(path), f"output {path}: exists", self.policy, key=path)

    def record_name(self, shard_id: str) -> str:
        """The manifest record of a shard."""
        return f"{MANIFEST_DIR}/{shard_id}.json"

    def committed_ids(self) -> set[str]:
        """Ids of the shards whose manifest record exists: the only shards a rerun trusts."""
        folder = self.path(MANIFEST_DIR)

        def ls() -> list[str]:
            try:
                return self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return []

        self.fs.invalidate_cache(folder)
        names = retried(ls, f"output {folder}: list", self.policy, key=folder)
        return {posixpath.basename(n)[: -len(".json")] for n in names if n.endswith(".json")}

    def records(self) -> list[dict[str, Any]]:
        """All manifest records, ordered by shard index."""
        out = [r for sid in self.committed_ids() if (r := self.read_json(self.record_name(sid))) is not None]
        return sorted(out, key=lambda r: r["index"])

    def is_empty(self) -> bool:
        """Whether the output folder has no files at all."""
        if not self.fs.exists(self.root):
            return True
        return not self.fs.ls(self.root, detail=False)

    def clear(self) -> None:
        """Delete everything in the output folder (for --overwrite)."""
        if self.fs.exists(self.root):
            for entry in self.fs.ls(self.root, detail=False):
                self.fs.rm(entry, recursive=True)

    def remove_tmp(self) -> None:
        """Drop staging leftovers (half-written files of killed runs are never read)."""
        tmp = self.path("_tmp")
        if self.fs.exists(tmp):
            self.fs.rm(tmp, recursive=True)


def check_compatible(existing: dict[str, Any], job: dict[str, Any], uri: str) -> None:
    """Refuse to resume into an output that another model, spec or input plan started."""
    what = {
        "weights_fingerprint": "the model weights",
        "settings_fingerprint": "the embedding settings (prompt, normalize, precision, truncate_dim, ...)",
        "spec_fingerprint": "the job spec (model, input or output sections)",
        "plan_fingerprint": "the input plan (files, sizes or row ranges changed)",
    }
    for key in COMPATIBILITY_KEYS:
        if existing.get(key) != job.get(key):
            raise OutputConflict(
                f"output.uri: {uri} already holds a job made with different {what[key]} "
                f"({key}: existing {existing.get(key)!r}, this run {job.get(key)!r}); "
                "use another output, or --overwrite to delete it and start again"
            )


def spec_fingerprint(spec: JobSpec) -> str:
    """Hash of the spec fields that shape an output (model settings are covered by the settings fingerprint)."""
    d = spec.to_dict()
    inp = {k: v for k, v in d["input"].items() if k != "storage_options"}
    out = {k: d["output"][k] for k in ("rows_per_file", "compression")}
    return digest(inp, out, spec.previous_uri, d["policy"]["on_bad_row"], size=16)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the vectors and the files."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def job_metadata(spec: JobSpec, plan: Plan, info: dict[str, Any]) -> dict[str, Any]:
    """The content of _job.json."""
    m = spec.model
    return {
        "model": {
            "name": m.name,
            "path": info["model_path"],
            "revision": m.revision,
            "dimension": info["dimension"],
            "model_dimension": info["model_dimension"],
            "dtype": info["dtype"],
            "precision": m.precision,
            "normalize": m.normalize,
            "prompt_name": m.prompt_name,
            "prompt": m.prompt,
            "task": m.task,
            "truncate_dim": m.truncate_dim,
            "max_seq_length": info["max_seq_length"],
            "similarity_fn_name": info["similarity_fn_name"],
            "pipeline": info["describe"],
        },
        "weights_fingerprint": info["weights_fingerprint"],
        "settings_fingerprint": info["settings_fingerprint"],
        "spec_fingerprint": spec_fingerprint(spec),
        "plan_fingerprint": plan.fingerprint,
        "rows": plan.rows,
        "shards": len(plan.shards),
        "versions": package_versions(),
        "spec": redact(spec.to_dict()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
