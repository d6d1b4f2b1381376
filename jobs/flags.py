"""What `embedjob run`, `plan` and `submit` share: the job flags, each taking its type, choices, help and
default from its field in jobs/spec.py, and the exit codes."""

from __future__ import annotations

import argparse
import textwrap
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from jobs.spec import JobSpec, SpecError, read_yaml, set_dotted

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_QUARANTINED = 3
EXIT_NOT_FINISHED = 4
EXIT_UNREACHABLE = 5
EXIT_INTERRUPTED = 130
EXIT_STATUS = f"""\
exit status (run, plan, submit and status alike):
  {EXIT_OK}    clean: the job finished and every row was embedded
  {EXIT_FAILED}    failed: the message names the shard and the object (submit: the job
       FAILED or was STOPPED); a rerun into the same output resumes
  {EXIT_USAGE}    bad usage or an invalid job spec: the message names the field
  {EXIT_QUARANTINED}    finished with quarantined rows (see OUTPUT/.embedjob/_errors/)
  {EXIT_NOT_FINISHED}    status --job-id: the job is still PENDING or RUNNING
  {EXIT_UNREACHABLE}    submit, status --job-id: the cluster was unreachable, refused the
       token, or does not know the job
  {EXIT_INTERRUPTED}  interrupted (run: rerun to resume; submit: stopped following, the
       job keeps running)"""

HELP_WIDTH = 76
# flag -> the spec field it sets; the order is the order of --help.
JOB_FLAGS: dict[str, str] = {
    "--model": "model.name",
    "--backend": "model.backend",
    "--precision": "model.precision",
    "--compute-precision": "model.compute_precision",
    "--normalize": "model.normalize",
    "--prompt-name": "model.prompt_name",
    "--truncate-dim": "model.truncate_dim",
    "--input": "input.uri",
    "--input-format": "input.format",
    "--text-column": "input.text_column",
    "--id-column": "input.id_column",
    "--passthrough": "input.passthrough",
    "--output": "output.uri",
    "--output-format": "output.format",
    "--rows-per-file": "output.rows_per_file",
    "--compression": "output.compression",
    "--vector-index": "output.vector_index",
    "--id-index": "output.id_index",
    "--replicas": "compute.replicas",
    "--cpus-per-replica": "compute.cpus_per_replica",
    "--gpus-per-replica": "compute.gpus_per_replica",
    "--batch-size": "compute.batch_size",
    "--max-batch-tokens": "compute.max_batch_tokens",
    "--device": "compute.device",
    "--on-bad-row": "policy.on_bad_row",
    "--chunk-tokens": "chunking.max_tokens",
    "--chunk-overlap": "chunking.overlap",
    "--chunk-emit": "chunking.emit",
    "--previous": "previous",
}
METAVARS = {
    "--model": "NAME",
    "--prompt-name": "NAME",
    "--input": "URI",
    "--output": "URI",
    "--previous": "URI",
    "--text-column": "COL",
    "--id-column": "COL",
    "--passthrough": "COL",
}


def spec_section(section: str) -> type[BaseModel]:
    """The spec class of a section name ("compute" -> ComputeSpec); "" -> JobSpec itself."""
    return JobSpec.model_fields[section].annotation if section else JobSpec


def spec_field(dotted: str) -> FieldInfo:
    """The pydantic field behind a dotted spec name: "compute.batch_size", or "previous" at the top."""
    section, _, name = dotted.rpartition(".")
    return spec_section(section).model_fields[name]


def bare_type(annotation: Any) -> Any:
    """An annotation without its `| None`."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def choices_of(annotation: Any) -> tuple[str, ...]:
    """A Literal field's choices; () for any other type."""
    kind = bare_type(annotation)
    return get_args(kind) if get_origin(kind) is Literal else ()


def shown_default(field: FieldInfo) -> str:
    """A field's default as --help and docs/job-spec.md show it: as YAML writes it, "unset" for none."""
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def flag_dest(flag: str) -> str:
    """argparse's attribute name for a flag: --text-column -> text_column."""
    return flag.removeprefix("--").replace("-", "_")


def _parser_of(dotted: str, kind: type, choices: tuple[str, ...]) -> Callable[[str], Any]:
    """A flag's argparse type: the value as the field's type, or an error that names the field."""

    def parse(text: str) -> Any:
        if choices and text not in choices:
            raise argparse.ArgumentTypeError(f"{dotted}: {text!r} is not one of {list(choices)}")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{dotted}: expected {kind.__name__}, got {text!r}") from None

    return parse


def flag_options(flag: str, dotted: str) -> dict[str, Any]:
    """add_argument's keywords for a job flag, from its spec field; default None: an unset flag sets nothing."""
    field = spec_field(dotted)
    kind, choices = bare_type(field.annotation), choices_of(field.annotation)
    repeat = "; repeatable" if get_origin(kind) is list else ""
    default = shown_default(field)
    # "unset" says nothing where the description already tells what unset means, or that it is required.
    told = default == "unset" and any(w in (field.description or "") for w in ("unset:", "required"))
    text = f"{field.description}{repeat}" + ("" if told else f" (default: {default})")
    options: dict[str, Any] = {"default": None, "help": text.replace("%", "%%")}
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif repeat:
        options.update(action="append", metavar=METAVARS.get(flag, "VALUE"))
    elif choices:
        options.update(type=_parser_of(dotted, str, choices), choices=choices)
    else:
        default_metavar = "N" if kind in (int, float) else "VALUE"
        options.update(type=_parser_of(dotted, kind, ()), metavar=METAVARS.get(flag, default_metavar))
    return options


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """Add the job file, a flag per common spec field (by section) and --set to a command's parser."""
    parser.add_argument(
        "job",
        nargs="?",
        metavar="JOB.yaml",
        help="the job file (optional when flags give model, input, output)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any spec field, e.g. --set model.revision=v2 (the value is parsed as YAML; repeatable; "
        "applied after the flags; docs/job-spec.md lists the fields)",
    )
    groups: dict[str, Any] = {}
    for flag, dotted in JOB_FLAGS.items():
        section = dotted.rpartition(".")[0]
        if section not in groups:
            title = f"{section} fields" if section else "top-level fields"
            about = (spec_section(section).__doc__ or "").strip().splitlines()[0]
            # Pre-wrapped: the commands keep their descriptions as written, for the exit status table.
            about = textwrap.fill(f"{about} Flags override the job file.", HELP_WIDTH)
            groups[section] = parser.add_argument_group(title, about)
        groups[section].add_argument(flag, **flag_options(flag, dotted))


def job_data(args: argparse.Namespace) -> dict[str, Any]:
    """The job file's mapping (empty without one) with the flags applied on top, then --set."""
    import yaml

    data = read_yaml(args.job) if args.job else {}
    for flag, dotted in JOB_FLAGS.items():
        value = getattr(args, flag_dest(flag), None)
        if value is not None:
            set_dotted(data, dotted, value)
    for item in args.set:
        if "=" not in item:
            raise SpecError(f"--set: expected FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        set_dotted(data, key.strip(), yaml.safe_load(value))
    return data


def load_spec(args: argparse.Namespace) -> JobSpec:
    """The job file with the flags applied on top, validated."""
    return JobSpec.from_dict(job_data(args))
