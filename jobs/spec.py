"""JobSpec: a job's YAML file plus CLI flags, validated before any work; every error names its field."""

from __future__ import annotations

import copy
import importlib
import os
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# embedder.backends.Backend, repeated so reading a spec needs no torch (a test keeps the two equal).
ModelBackend = Literal["torch", "onnx", "openvino"]
MODEL_BACKENDS: tuple[str, ...] = get_args(ModelBackend)
# embedder.compute_precision.COMPUTE_PRECISIONS, spelled out so the spec loads without torch (a test keeps them equal).
ComputePrecision = Literal["float32", "bfloat16", "float16"]
COMPUTE_PRECISIONS: tuple[str, ...] = get_args(ComputePrecision)
FileFormat = Literal["parquet", "jsonl", "json", "csv"]
FILE_FORMATS: tuple[str, ...] = get_args(FileFormat)
InputFormat = Literal["auto", FileFormat, "hf_disk", "hf_hub", "hf_files"]
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
BadRowPolicy = Literal["fail", "quarantine"]
BAD_ROW_POLICIES: tuple[str, ...] = get_args(BadRowPolicy)
Compression = Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
OutputFormat = Literal["auto", "parquet", "lance"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
ChunkEmit = Literal["chunks", "documents", "both"]
CHUNK_EMITS: tuple[str, ...] = get_args(ChunkEmit)
VectorIndex = Literal["none", "ivf_pq", "ivf_hnsw_sq", "ivf_flat"]
VECTOR_INDEXES: tuple[str, ...] = get_args(VectorIndex)
InputModality = Literal["text", "image"]
INPUT_MODALITIES: tuple[str, ...] = get_args(InputModality)

PACKAGE_PREFIX = "python-package:"


class SpecError(ValueError):
    """An invalid job spec; the message starts with the dotted field name."""


class _Section(BaseModel):
    """A spec section: strict types (no "5" for 5, no true for 1), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSpec(_Section):
    """Which model to load and how to encode with it."""

    name: str = Field(
        "",
        description="required: a local folder, a Hugging Face hub id, or python-package:NAME (a package "
        "with get_model_path())",
    )
    revision: str | None = Field(
        None, description="hub revision: a branch, tag or commit (unset: the default branch)"
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for loading the model, e.g. {dtype: bfloat16}"
    )
    backend: ModelBackend = Field(
        "torch",
        description="where the transformer runs: torch, onnx (ONNX Runtime) or openvino; model_kwargs "
        "file_name / provider / export / ov_config pick the file and runtime options",
    )
    prompt_name: str | None = Field(
        None, description="a prompt saved with the model, e.g. query or document, put before every text"
    )
    prompt: str | None = Field(
        None, description="a literal prompt put before every text (instead of prompt_name)"
    )
    task: str | None = Field(None, description="the task a Router model routes the texts to, e.g. document")
    normalize: bool = Field(False, description="scale every vector to unit length")
    truncate_dim: int | None = Field(
        None, ge=1, description="keep the first N dimensions of every vector (Matryoshka models; unset: all)"
    )
    precision: Precision = Field("float32", description="the vectors' type: floats, or quantised int8/binary")
    compute_precision: ComputePrecision = Field(
        "float32",
        description="the dtype the matrix products run in: float32, or bfloat16/float16 (autocast; LayerNorm, "
        "pooling and normalisation stay float32; vectors move by ~1e-4 cosine; bf16 needs a CPU with "
        "avx512_bf16 or amx_bf16, or a GPU, to be faster)",
    )
    int8_ranges: list[list[float]] | None = Field(
        None,
        description="int8/uint8: [[min per dimension], [max per dimension]] to quantise with (unset: "
        "calibrated once per output on a sample of its input, then kept by resumes and --previous runs)",
    )
    max_seq_length: int | None = Field(
        None, ge=1, description="the tokens the model reads of a text (unset: the model's own limit)"
    )
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code")
    allow_pickle: bool = Field(
        False, description="load pickled weights (pytorch_model.bin), which can run code"
    )


class InputSpec(_Section):
    """Where the rows come from: Parquet, JSON or CSV files (on any fsspec filesystem) or a HF dataset."""

    uri: str | None = Field(
        None,
        description="a file, folder or glob of Parquet, JSON lines, JSON or CSV files, or a save_to_disk "
        "folder (required unless dataset or data_files)",
    )
    format: InputFormat = Field(
        "auto",
        description="what the input is; auto: hf_hub with dataset, hf_files with data_files, hf_disk for a "
        "save_to_disk folder, else by file name (.parquet, .jsonl/.ndjson, .json, .csv, the text ones also "
        ".gz/.zst; others parquet); set it to read one format of a mixed folder",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for reading the input (unset: credentials from the environment)",
    )
    text_column: str = Field("text", description="the column of texts (or images) to embed")
    modality: InputModality = Field(
        "text",
        description="what text_column holds: texts, or images (a CLIP-style model): encoded bytes, or paths "
        "or URIs relative to the input file's folder",
    )
    id_column: str | None = Field(None, description="the column of unique row ids (unset: ids are FILE:ROW)")
    passthrough: list[str] = Field(
        default_factory=list, description="input columns copied to the output next to each vector"
    )
    dataset: str | None = Field(None, description="a Hugging Face hub dataset id (format hf_hub)")
    config: str | None = Field(None, description="the hub dataset's configuration name")
    split: str | None = Field(None, description="the dataset's split (required when it has several)")
    data_files: Any = Field(
        None, description="files for datasets.load_dataset (format hf_files; the builder from the extension)"
    )
    previous: str | None = Field(None, description="the same as the top-level previous")


class OutputSpec(_Section):
    """Where the vectors go; one output file per shard of at most `rows_per_file` rows."""

    uri: str = Field(
        "", description="required: the output folder, or a .lance dataset, on any fsspec filesystem"
    )
    rows_per_file: int = Field(10_000, ge=1, description="the most rows of a shard, and so of an output file")
    compression: Compression = Field("zstd", description="the Parquet output files' compression codec")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for writing the output (unset: credentials from the environment)",
    )
    format: OutputFormat = Field(
        "auto", description="Parquet part files or one Lance dataset; auto: lance when uri ends in .lance"
    )
    vector_index: VectorIndex = Field(
        "none",
        description="Lance output: the vector index built on the embedding column at the end of the job",
    )
    id_index: bool = Field(False, description="Lance output: build a BTREE index on id at the end of the job")

    @property
    def kind(self) -> str:
        """The sink this output uses: 'parquet' or 'lance'."""
        if self.format != "auto":
            return self.format
        return "lance" if self.uri.rstrip("/").endswith(".lance") else "parquet"


class ComputeSpec(_Section):
    """How many model replicas, on what, with which batch size (or token budget)."""

    replicas: int | None = Field(
        None,
        ge=1,
        description="model replicas (unset: the cluster's GPUs / gpus_per_replica, or its CPUs / "
        "cpus_per_replica)",
    )
    gpus_per_replica: float | None = Field(
        None,
        ge=0,
        description="GPUs a replica holds; a fraction shares a GPU (unset: 1 with device cuda, else 0)",
    )
    cpus_per_replica: int = Field(1, ge=1, description="CPUs a replica holds (and its torch threads)")
    batch_size: int = Field(32, ge=1, description="texts per model batch")
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="padded tokens per model batch (unset: batch_size times the model's token limit)",
    )
    rows_per_call: int | None = Field(
        None,
        ge=1,
        description="rows read and encoded per model call; encode sorts a call's texts by length, so bigger calls "
        "pad less; a read never crosses a row group (unset: 8 x batch_size, raised to 1,024 for texts cut to "
        "at most 131,072 characters, not images or chunking)",
    )
    device: Device = Field("auto", description="where replicas run; auto: on GPUs when the cluster has any")
    in_flight_per_replica: int = Field(
        2, ge=1, description="shards queued per replica, so it never waits for the next"
    )
    wait_for_resources_s: float | None = Field(
        None,
        ge=0,
        description="seconds to wait for nodes that fit a replica, e.g. from an autoscaler (unset: fail at "
        "once)",
    )


class PolicySpec(_Section):
    """What to do about bad rows, flaky storage and dying workers."""

    on_bad_row: BadRowPolicy = Field(
        "fail",
        description="a bad row (null text, invalid UTF-8, null or repeated id) fails the job, or goes to "
        "OUTPUT/.embedjob/_errors/",
    )
    retries: int = Field(
        5, ge=1, description="tries of each storage call, with backoff, before the job fails"
    )
    shard_attempts: int = Field(
        4, ge=1, description="tries of a shard whose replica died before the job fails"
    )
    max_text_chars: int | None = Field(
        None,
        ge=1,
        description="cut a text after this many visible characters (unset: 256 per token of the model's "
        "limit)",
    )
    max_image_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="an image file larger than this is a bad row (input.modality image)",
    )
    max_image_pixels: int = Field(
        64_000_000,
        ge=1,
        description="an image of more pixels (width x height) is a bad row, checked before decoding",
    )


class ChunkingSpec(_Section):
    """Long texts split into token windows, embedded one by one (off unless the section or a flag is given)."""

    enabled: bool = Field(
        False, description="split texts into windows; true once the section or any --chunk-* flag is given"
    )
    max_tokens: int | None = Field(
        None,
        ge=2,
        description="tokens of a window, prompt and special tokens included (unset: the model's limit)",
    )
    overlap: int = Field(0, ge=0, description="tokens a window shares with the one before it")
    emit: ChunkEmit = Field(
        "chunks",
        description="chunks: a row per window (id, chunk, char_start, char_end); documents: a row per text, "
        "its windows' vectors averaged by tokens; both: the two in one table (chunk null on document rows)",
    )


class JobSpec(_Section):
    """A whole job: model, input, output, compute, policy and chunking sections, plus an optional previous output."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    input: InputSpec = Field(default_factory=InputSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    previous: str | None = Field(
        None,
        description="an earlier output to reuse unchanged rows' vectors from, matched on id (a Lance output: "
        "output.uri itself, updated in place)",
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Build and validate a spec from a parsed YAML mapping."""
        if not isinstance(data, dict):
            raise SpecError(f"job: expected a mapping at the top level, got {type(data).__name__}")
        data = dict(data)
        if isinstance(data.get("model"), str):
            data["model"] = {"name": data["model"]}
        for name in _SECTIONS:
            if name in data and data[name] is None:
                data[name] = {}
        if isinstance(data.get("chunking"), dict) and "enabled" not in data["chunking"]:
            data["chunking"] = {**data["chunking"], "enabled": True}  # giving the section turns it on
        try:
            spec = cls.model_validate(data)
        except ValidationError as e:
            raise _spec_error(e) from None
        spec.check()
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
        return self.model_dump()

    @property
    def previous_uri(self) -> str | None:
        """The previous output to reuse vectors from (top-level `previous` or `input.previous`)."""
        return self.previous or self.input.previous

    def check(self) -> None:
        """Check cross-field rules; raise SpecError naming the field."""
        m, i, o = self.model, self.input, self.output
        if not m.name:
            raise SpecError("model.name: required (a local folder, a hub id, or python-package:NAME)")
        if m.prompt is not None and m.prompt_name is not None:
            raise SpecError("model.prompt: give either model.prompt or model.prompt_name, not both")
        if m.int8_ranges is not None:
            r = m.int8_ranges
            if len(r) != 2 or not r[0] or len(r[0]) != len(r[1]):
                raise SpecError(
                    "model.int8_ranges: expected [[min per dimension], [max per dimension]] of equal length, "
                    f"got {len(r)} list(s) of length(s) {[len(x) for x in r]}"
                )
            if m.precision not in ("int8", "uint8"):
                raise SpecError(
                    f"model.int8_ranges: used by precision int8 or uint8 only, not {m.precision!r}"
                )
        if i.format == "hf_hub" or (i.format == "auto" and i.dataset):
            if not i.dataset:
                raise SpecError("input.dataset: required when input.format is 'hf_hub'")
        elif i.format == "hf_files" or (i.format == "auto" and i.data_files):
            if not i.data_files:
                raise SpecError("input.data_files: required when input.format is 'hf_files'")
        elif not i.uri:
            raise SpecError(
                "input.uri: required (a file, folder or glob of Parquet, JSON lines, JSON or CSV files, or a "
                "save_to_disk folder)"
            )
        if not i.text_column:
            raise SpecError("input.text_column: must be a non-empty column name")
        for k, col in enumerate(i.passthrough):
            if not col:
                raise SpecError(f"input.passthrough[{k}]: expected a column name, got {col!r}")
            if col in RESERVED_COLUMNS:
                raise SpecError(
                    f"input.passthrough[{k}]: {col!r} clashes with an output column {RESERVED_COLUMNS}"
                )
        if len(set(i.passthrough)) != len(i.passthrough):
            raise SpecError(f"input.passthrough: duplicate column names in {i.passthrough!r}")
        if not o.uri:
            raise SpecError("output.uri: required (a folder on any fsspec filesystem)")
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
        if same and o.kind != "lance":
            raise SpecError(
                f"previous: {self.previous_uri!r} is output.uri itself; point it at an earlier run's output "
                "(only a Lance output is updated in place)"
            )
        ch = self.chunking
        if ch.enabled and i.modality != "text":
            raise SpecError(
                f"chunking: splits texts into token windows; input.modality is {i.modality!r} (turn chunking off)"
            )
        clash = [c for c in i.passthrough if c in CHUNK_COLUMNS]
        if ch.enabled and ch.emit != "documents" and clash:
            raise SpecError(f"input.passthrough: {clash[0]!r} clashes with a chunk column {CHUNK_COLUMNS}")
        if ch.enabled and ch.max_tokens is not None and ch.overlap >= ch.max_tokens:
            raise SpecError(
                f"chunking.overlap: {ch.overlap} tokens must be fewer than chunking.max_tokens ({ch.max_tokens})"
            )
        if ch.enabled and ch.emit != "documents" and o.kind == "lance" and same:
            raise SpecError(
                f"chunking.emit: {ch.emit!r} rows cannot update a live Lance table in place yet; use emit "
                "'documents', or a Parquet output with previous set to an earlier run"
            )
        if self.previous and i.previous and self.previous != i.previous:
            raise SpecError(f"previous: {self.previous!r} disagrees with input.previous {i.previous!r}")


RESERVED_COLUMNS = ("id", "embedding", "text_hash")
CHUNK_COLUMNS = ("chunk", "char_start", "char_end")  # the columns of rows per window (chunking.emit)
_SECTIONS = ("model", "input", "output", "compute", "policy", "chunking")


def as_spec(spec: JobSpec | dict[str, Any] | str) -> JobSpec:
    """A JobSpec from a JobSpec, a mapping, or a YAML path."""
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, dict):
        return JobSpec.from_dict(spec)
    return JobSpec.load(spec)


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


# pydantic's error type -> the type named in "expected <type>, got ..."
_EXPECTED = {
    "string_type": "str",
    "int_type": "int",
    "float_type": "float",
    "bool_type": "bool",
    "dict_type": "dict",
    "list_type": "list",
    "model_type": "a mapping",
}


def _spec_error(error: ValidationError) -> SpecError:
    """pydantic's first error as a SpecError that starts with the dotted field name."""
    e = error.errors()[0]
    loc, kind, value = e["loc"], e["type"], e["input"]
    where = str(loc[0])
    for part in loc[1:]:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    if kind == "extra_forbidden":
        return SpecError(
            f"{where}: unknown field; valid fields are {sorted(_model_at(loc[:-1]).model_fields)}"
        )
    if kind == "literal_error":
        choices = get_args(_model_at(loc[:-1]).model_fields[loc[-1]].annotation)
        return SpecError(f"{where}: {value!r} is not one of {list(choices)}")
    if kind == "greater_than_equal":
        return SpecError(f"{where}: must be >= {e['ctx']['ge']:g}, got {value!r}")
    if kind in _EXPECTED:
        if value is None:
            return SpecError(f"{where}: must not be null (expected {_EXPECTED[kind]})")
        return SpecError(f"{where}: expected {_EXPECTED[kind]}, got {type(value).__name__} {value!r}")
    return SpecError(f"{where}: {e['msg']}, got {value!r}")


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The spec class at a section path: () -> JobSpec, ("model",) -> ModelSpec."""
    cls: type[BaseModel] = JobSpec
    for part in loc:
        cls = cls.model_fields[part].annotation
    return cls
