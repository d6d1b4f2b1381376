"""JobSpec: a job's YAML file plus CLI flags, validated before any work; every error names its field."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
InputFormat = Literal["auto", "parquet", "hf_disk", "hf_hub", "hf_files"]
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
BadRowPolicy = Literal["fail", "quarantine"]
BAD_ROW_POLICIES: tuple[str, ...] = get_args(BadRowPolicy)
Compression = Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
OutputFormat = Literal["auto", "parquet", "lance"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
VectorIndex = Literal["none", "ivf_pq", "ivf_hnsw_sq", "ivf_flat"]
VECTOR_INDEXES: tuple[str, ...] = get_args(VectorIndex)

PACKAGE_PREFIX = "python-package:"


class SpecError(ValueError):
    """An invalid job spec; the message starts with the dotted field name."""


@dataclass
class ModelSpec:
    """Which model to load and how to encode with it."""

    name: str = ""
    revision: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    prompt_name: str | None = None
    prompt: str | None = None
    task: str | None = None
    normalize: bool = False
    truncate_dim: int | None = None
    precision: str = "float32"
    max_seq_length: int | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False


@dataclass
class InputSpec:
    """Where the rows come from: Parquet files (any fsspec filesystem) or a Hugging Face dataset."""

    uri: str | None = None
    format: str = "auto"
    storage_options: dict = field(default_factory=dict)
    text_column: str = "text"
    id_column: str | None = None
    passthrough: list = field(default_factory=list)
    dataset: str | None = None
    config: str | None = None
    split: str | None = None
    data_files: Any = None
    previous: str | None = None


@dataclass
class OutputSpec:
    """Where the vectors go; one output file per shard of at most `rows_per_file` rows."""

    uri: str = ""
    rows_per_file: int = 10_000
    compression: str = "zstd"
    storage_options: dict = field(default_factory=dict)
    format: str = "auto"  # "auto": lance when the URI ends in .lance, else parquet
    vector_index: str = "none"  # lance: built on the embedding column at the end of the job
    id_index: bool = False  # lance: a BTREE scalar index on id at the end of the job

    @property
    def kind(self) -> str:
        """The sink this output uses: 'parquet' or 'lance'."""
        if self.format != "auto":
            return self.format
        return "lance" if self.uri.rstrip("/").endswith(".lance") else "parquet"


@dataclass
class ComputeSpec:
    """How many model replicas, on what, with which batch size (or token budget)."""

    replicas: int | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: int = 1
    batch_size: int = 32
    max_batch_tokens: int | None = None
    device: str = "auto"
    in_flight_per_replica: int = 2
    wait_for_resources_s: float | None = None  # wait this long for nodes that fit a replica (autoscaling)


@dataclass
class PolicySpec:
    """What to do about bad rows, flaky storage and dying workers."""

    on_bad_row: str = "fail"
    retries: int = 5
    shard_attempts: int = 4
    max_text_chars: int | None = None  # None: cut at 256 chars per token of the model's limit


@dataclass
class JobSpec:
    """A whole job: model, input, output, compute and policy sections, plus an optional previous output."""

    model: ModelSpec = field(default_factory=ModelSpec)
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    compute: ComputeSpec = field(default_factory=ComputeSpec)
    policy: PolicySpec = field(default_factory=PolicySpec)
    previous: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Build and validate a spec from a parsed YAML mapping."""
        if not isinstance(data, dict):
            raise SpecError(f"job: expected a mapping at the top level, got {type(data).__name__}")
        data = dict(data)
        if isinstance(data.get("model"), str):
            data["model"] = {"name": data["model"]}
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        _unknown(data, sections, "")
        kwargs: dict[str, Any] = {}
        for name, section_cls in _SECTIONS.items():
            value = data.get(name, {})
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise SpecError(f"{name}: expected a mapping, got {type(value).__name__} {value!r}")
            kwargs[name] = _build(section_cls, value, name)
        kwargs["previous"] = _check_type(data.get("previous"), "str | None", "previous")
        spec = cls(**kwargs)
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | None = None, overrides: dict[str, Any] | None = None) -> JobSpec:
        """Read a YAML job file (optional) and apply dotted-key overrides such as {"input.uri": "..."}."""
        data: dict[str, Any] = {}
        if path is not None:
            data = read_yaml(path)
        for dotted, value in (overrides or {}).items():
            set_dotted(data, dotted, value)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (the form written, redacted, into _job.json)."""
        return dataclasses.asdict(self)

    @property
    def previous_uri(self) -> str | None:
        """The previous output to reuse vectors from (top-level `previous` or `input.previous`)."""
        return self.previous or self.input.previous

    def validate(self) -> None:
        """Check cross-field rules; raise SpecError naming the field."""
        m, i, o, c, p = self.model, self.input, self.output, self.compute, self.policy
        if not m.name:
            raise SpecError("model.name: required (a local folder, a hub id, or python-package:NAME)")
        _choice(m.precision, PRECISIONS, "model.precision")
        _positive(m.truncate_dim, "model.truncate_dim")
        _positive(m.max_seq_length, "model.max_seq_length")
        if m.prompt is not None and m.prompt_name is not None:
            raise SpecError("model.prompt: give either model.prompt or model.prompt_name, not both")
        _choice(i.format, INPUT_FORMATS, "input.format")
        if i.format == "hf_hub" or (i.format == "auto" and i.dataset):
            if not i.dataset:
                raise SpecError("input.dataset: required when input.format is 'hf_hub'")
        elif i.format == "hf_files" or (i.format == "auto" and i.data_files):
            if not i.data_files:
                raise SpecError("input.data_files: required when input.format is 'hf_files'")
        elif not i.uri:
            raise SpecError("input.uri: required (a Parquet file, folder or glob, or a save_to_disk folder)")
        if not i.text_column:
            raise SpecError("input.text_column: must be a non-empty column name")
        for k, col in enumerate(i.passthrough):
            if not isinstance(col, str) or not col:
                raise SpecError(f"input.passthrough[{k}]: expected a column name, got {col!r}")
            if col in RESERVED_COLUMNS:
                raise SpecError(
                    f"input.passthrough[{k}]: {col!r} clashes with an output column {RESERVED_COLUMNS}"
                )
        if len(set(i.passthrough)) != len(i.passthrough):
            raise SpecError(f"input.passthrough: duplicate column names in {i.passthrough!r}")
        if not o.uri:
            raise SpecError("output.uri: required (a folder on any fsspec filesystem)")
        _positive(o.rows_per_file, "output.rows_per_file")
        _choice(o.compression, COMPRESSIONS, "output.compression")
        _choice(o.format, OUTPUT_FORMATS, "output.format")
        _choice(o.vector_index, VECTOR_INDEXES, "output.vector_index")
        if o.kind != "lance" and (o.vector_index != "none" or o.id_index):
            field_name = "output.vector_index" if o.vector_index != "none" else "output.id_index"
            raise SpecError(f"{field_name}: an index is built on a Lance output only (output.format: lance)")
        same = bool(self.previous_uri) and self.previous_uri.rstrip("/") == o.uri.rstrip("/")
        if o.kind == "lance" and self.previous_uri and not same:
            raise SpecError(
                f"previous: {self.previous_uri!r}: a Lance output is updated in place; set previous to "
                f"output.uri itself ({o.uri!r}) to update it, or leave it unset"
            )
        if o.kind != "lance" and self.previous_uri and self.previous_uri.rstrip("/").endswith(".lance"):
            raise SpecError(
                f"previous: {self.previous_uri!r} is a Lance table; it is updated in place: set output.uri "
                "to it as well"
            )
        _positive(c.replicas, "compute.replicas")
        if c.gpus_per_replica is not None and c.gpus_per_replica < 0:
            raise SpecError(f"compute.gpus_per_replica: must be >= 0, got {c.gpus_per_replica!r}")
        _positive(c.cpus_per_replica, "compute.cpus_per_replica")
        _positive(c.batch_size, "compute.batch_size")
        _positive(c.max_batch_tokens, "compute.max_batch_tokens")
        _positive(c.in_flight_per_replica, "compute.in_flight_per_replica")
        _choice(c.device, DEVICES, "compute.device")
        if c.wait_for_resources_s is not None and c.wait_for_resources_s < 0:
            raise SpecError(f"compute.wait_for_resources_s: must be >= 0, got {c.wait_for_resources_s!r}")
        _choice(p.on_bad_row, BAD_ROW_POLICIES, "policy.on_bad_row")
        _positive(p.retries, "policy.retries")
        _positive(p.shard_attempts, "policy.shard_attempts")
        _positive(p.max_text_chars, "policy.max_text_chars")
        if same and o.kind != "lance":
            raise SpecError(
                f"previous: {self.previous_uri!r} is output.uri itself; point it at an earlier run's output "
                "(only a Lance output is updated in place)"
            )
        if self.previous and i.previous and self.previous != i.previous:
            raise SpecError(f"previous: {self.previous!r} disagrees with input.previous {i.previous!r}")


RESERVED_COLUMNS = ("id", "embedding", "text_hash")
_SECTIONS = {
    "model": ModelSpec,
    "input": InputSpec,
    "output": OutputSpec,
    "compute": ComputeSpec,
    "policy": PolicySpec,
}


def resolve_model_name(name: str) -> str:
    """Turn `python-package:NAME` into the folder that package's get_model_path() returns; else unchanged."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    package = name[len(PACKAGE_PREFIX) :]
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise SpecError(f"model.name: cannot import package {package!r} ({e})") from e
    if not hasattr(module, "get_model_path"):
        raise SpecError(f"model.name: package {package!r} has no get_model_path()")
    return str(module.get_model_path())


def read_yaml(path: str) -> dict[str, Any]:
    """Parse a YAML job file; a syntax error names the file and line."""
    import yaml

    if not os.path.exists(path):
        raise SpecError(f"job file: {path} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise SpecError(f"job file: {path}: invalid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"job file: {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set data["a"]["b"] = value for dotted key "a.b", creating (or expanding a string model) as needed."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if isinstance(child, str) and key == "model":
            child = {"name": child}
        if not isinstance(child, dict):
            child = {} if child is None else child
        node[key] = child = copy.copy(child) if isinstance(child, dict) else child
        if not isinstance(child, dict):
            raise SpecError(f"{key}: expected a mapping to set {dotted!r}, got {type(child).__name__}")
        node = child
    node[leaf] = value


def _build(section_cls: type, data: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    _unknown(data, fields, prefix + ".")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check_type(value, str(fields[name].type), f"{prefix}.{name}")
    return section_cls(**kwargs)


def _unknown(data: dict[str, Any], known: dict[str, Any], prefix: str) -> None:
    for key in data:
        if key not in known:
            raise SpecError(f"{prefix}{key}: unknown field; valid fields are {sorted(known)}")


def _check_type(value: Any, annotation: str, where: str) -> Any:
    """Check `value` against the (string) annotation of its field; ints are accepted where floats are."""
    optional = "None" in annotation or annotation == "Any"
    if value is None:
        if optional:
            return None
        raise SpecError(f"{where}: must not be null (expected {annotation})")
    base = annotation.replace(" | None", "")
    checks: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "dict": (dict,),
        "list": (list,),
    }
    if base == "Any":
        return value
    allowed = checks[base]
    if isinstance(value, bool) and base in ("int", "float"):
        raise SpecError(f"{where}: expected {base}, got bool {value!r}")
    if base == "list" and isinstance(value, str):
        value = [value]
    if not isinstance(value, allowed):
        raise SpecError(f"{where}: expected {base}, got {type(value).__name__} {value!r}")
    return value


def _choice(value: Any, valid: tuple[str, ...], where: str) -> None:
    if value not in valid:
        raise SpecError(f"{where}: {value!r} is not one of {list(valid)}")


def _positive(value: int | None, where: str) -> None:
    if value is not None and value < 1:
        raise SpecError(f"{where}: must be >= 1, got {value!r}")
