"""The `embedjob` command line: --version, help on every flag, job flags taken from the spec (choices, defaults,
the field named in errors), `submit` taking the same job flags as `run`, and the generated job-spec page."""

from __future__ import annotations

import argparse
import importlib.metadata
import operator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs import flags, spec_doc, submit
from jobs.cli import build_parser, load_spec, main
from jobs.spec import (
    BAD_ROW_POLICIES,
    COMPRESSIONS,
    DEVICES,
    INPUT_FORMATS,
    MODEL_BACKENDS,
    OUTPUT_FORMATS,
    PRECISIONS,
    VECTOR_INDEXES,
    JobSpec,
)

REPO = Path(__file__).resolve().parents[2]
BASE = ["--model", "m", "--input", "s3://b/in", "--output", "s3://b/out"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_version_names_embedjob_torch_and_ray(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"embedjob {importlib.metadata.version('embedjob')} (torch ")
    assert f"ray {importlib.metadata.version('ray')}" in out


def test_every_flag_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"run", "plan", "status", "search", "submit"}
    for name, sub in [("embedjob", parser), *commands.items()]:
        for action in sub._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help, f"{name} {action.option_strings or action.dest}: no help"


@pytest.mark.parametrize("command", ["run", "plan", "submit"])
def test_job_flags_take_choices_and_defaults_from_the_spec(command: str) -> None:
    sub = _subparsers(build_parser())[command]
    choices = {
        "--precision": PRECISIONS,
        "--backend": MODEL_BACKENDS,
        "--device": DEVICES,
        "--on-bad-row": BAD_ROW_POLICIES,
        "--compression": COMPRESSIONS,
        "--output-format": OUTPUT_FORMATS,
        "--vector-index": VECTOR_INDEXES,
        "--input-format": INPUT_FORMATS,
    }
    for flag, allowed in choices.items():
        assert tuple(_action(sub, flag).choices) == allowed, flag
    defaults = JobSpec()
    for flag, dotted in flags.JOB_FLAGS.items():
        action = _action(sub, flag)
        assert action.default is None, f"{flag}: an unset flag must leave the job file's value"
        value = operator.attrgetter(dotted)(defaults)
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        if value not in (None, ""):
            assert f"(default: {shown})" in action.help, f"{flag}: {action.help!r}"
        else:
            assert "(default: unset)" in action.help or "unset:" in action.help or "required" in action.help
    assert "exit status" in sub.epilog


def test_bad_flag_values_name_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *BASE, "--precision", "fp8"]) == 2
    assert f"model.precision: 'fp8' is not one of {list(PRECISIONS)}" in capsys.readouterr().err
    assert main(["plan", *BASE, "--batch-size", "many"]) == 2
    assert "compute.batch_size: expected int, got 'many'" in capsys.readouterr().err
    assert main(["submit", *BASE, "--device", "tpu"]) == 2
    assert "compute.device: 'tpu' is not one of" in capsys.readouterr().err


def test_normalize_prompt_truncate_and_passthrough_flags(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"model": {"name": "m", "normalize": True}, "input": {"passthrough": ["x"]}})
    )
    parse = build_parser().parse_args
    spec = load_spec(parse(["run", str(job), *BASE]))
    assert spec.model.normalize is True and spec.input.passthrough == ["x"]  # no flag: the file's values
    argv = ["run", str(job), *BASE, "--no-normalize", "--prompt-name", "query", "--truncate-dim", "64",
            "--passthrough", "lang", "--passthrough", "src"]  # fmt: skip
    spec = load_spec(parse(argv))
    assert (spec.model.normalize, spec.model.prompt_name, spec.model.truncate_dim) == (False, "query", 64)
    assert spec.input.passthrough == ["lang", "src"]
    assert load_spec(parse(["run", *BASE, "--normalize"])).model.normalize is True


class RecordingClient:
    """Stands in for JobSubmissionClient: records the submission and the job.yaml it uploads."""

    def __init__(self) -> None:
        self.submitted: dict[str, Any] = {}

    def submit_job(self, **kwargs: Any) -> None:
        staged = Path(kwargs["runtime_env"]["working_dir"]) / submit.JOB_FILE_NAME
        self.submitted = {**kwargs, "job": yaml.safe_load(staged.read_text())}


def test_submit_takes_runs_job_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`submit` once refused --text-column and --set; now the job it uploads has them applied."""
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"model": "org/m", "input": {"uri": "s3://b/in"}, "output": {"uri": "s3://o"}})
    )
    client = RecordingClient()
    monkeypatch.setattr(submit, "make_client", lambda address, environ: client)
    argv = ["submit", str(job), "--address", "http://h:8265", "--no-wait", "--no-upload-package",
            "--text-column", "body", "--set", "model.normalize=true", "--set", "compute.batch_size=64",
            "--output", "s3://b/out-2"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == client.submitted["submission_id"]
    staged = client.submitted["job"]
    assert staged["input"] == {"uri": "s3://b/in", "text_column": "body"}
    assert staged["model"] == {"name": "org/m", "normalize": True} and staged["compute"] == {"batch_size": 64}
    assert (
        staged["output"]["uri"] == "s3://b/out-2"
        and "--output s3://b/out-2" in client.submitted["entrypoint"]
    )


def test_submit_refuses_an_invalid_job_before_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unreachable(address: str | None, environ: Any) -> None:
        raise AssertionError("the cluster was asked")

    monkeypatch.setattr(submit, "make_client", unreachable)
    assert main(["submit", *BASE, "--set", "compute.replicas=0", "--no-wait"]) == 2
    assert "compute.replicas: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["submit", "--model", "m", "--input", "s3://b/in", "--output", "out", "--no-wait"]) == 2
    assert "output.uri: 'out' is a relative path" in capsys.readouterr().err


def test_job_spec_page_is_generated_from_the_spec() -> None:
    """docs/job-spec.md is what `python -m jobs.spec_doc` prints: regenerate it after changing jobs/spec.py."""
    page = (REPO / "docs" / "job-spec.md").read_text()
    assert page == spec_doc.render(), f"docs/job-spec.md is stale: run `{spec_doc.COMMAND}`"
    for section in ("model", "input", "output", "compute", "policy"):
        for name, field in flags.spec_section(section).model_fields.items():
            assert field.description, f"{section}.{name}: no Field(description=...)"
            assert f"| `{section}.{name}` |" in page
    assert JobSpec.model_fields["previous"].description and "| `previous` |" in page
    for flag, dotted in flags.JOB_FLAGS.items():
        assert flags.spec_field(dotted) and f"`{flag}`" in page
    assert "docs/job-spec.md" in (REPO / "README.md").read_text()
