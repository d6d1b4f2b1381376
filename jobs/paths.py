"""Where an input and an output may sit relative to each other: never the same folder, never one inside the other."""

from __future__ import annotations

import posixpath
from typing import Any

from jobs.spec import SpecError

_GLOB_CHARS = "*?["


def _location(uri: str, storage_options: dict[str, Any] | None) -> tuple[str, str]:
    """(protocol, normalised path) of a URI; a glob stands for the folder it starts in."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if any(c in path for c in _GLOB_CHARS):
        cut = min(path.index(c) for c in _GLOB_CHARS if c in path)
        path = posixpath.dirname(path[:cut])
    return protocol, posixpath.normpath(path).rstrip("/") or "/"


def overlap(a: str, b: str) -> str | None:
    """How two normalised paths overlap: 'the same', 'inside', 'contains', or None."""
    if a == b:
        return "the same"
    if a.startswith(b.rstrip("/") + "/"):
        return "inside"
    if b.startswith(a.rstrip("/") + "/"):
        return "contains"
    return None


def check_separate(
    output_uri: str,
    input_uri: str | None,
    input_options: dict[str, Any] | None,
    output_options: dict[str, Any] | None,
    previous_uri: str | None = None,
) -> None:
    """Refuse an output that is, is inside, or contains the input (or the --previous output): a SpecError."""
    out_proto, out_path = _location(output_uri, output_options)
    if previous_uri and previous_uri.rstrip("/") == output_uri.rstrip("/"):
        previous_uri = None  # a Lance table updated in place (the spec allows it for Lance outputs only)
    others = [("input.uri", input_uri, input_options), ("previous", previous_uri, output_options)]
    for field, uri, options in others:
        if not uri:
            continue
        proto, path = _location(uri, options)
        how = overlap(out_path, path) if proto == out_proto else None
        if how:
            what = {"the same": "is the same folder as", "inside": "is inside", "contains": "contains"}[how]
            raise SpecError(
                f"output.uri: {output_uri} {what} {field} {uri}; an output must be a folder of its own "
                "(its part files would be read as input, and --overwrite would delete the input)"
            )


def check_local_paths(model_name: str, output_uri: str) -> None:
    """Before Ray starts and a model loads: a local model folder exists, a local output can be written."""
    import os

    if model_name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(model_name)):
        raise SpecError(
            f"model.name: {model_name} does not exist (a local folder, a hub id, or python-package:NAME)"
        )
    if "://" in output_uri and not output_uri.startswith("file://"):
        return
    path = os.path.abspath(output_uri.removeprefix("file://"))
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise SpecError(f"output.uri: {output_uri} cannot be written here ({parent} is not writable)")
