"""Which exported file a backend loads from a model folder, following sentence-transformers' rules."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

# The file each backend loads when model_kwargs names none, and what counts as one of its files.
DEFAULT_FILES = {"onnx": "model.onnx", "openvino": "openvino_model.xml"}
FILE_GLOBS = {"onnx": "*.onnx", "openvino": "openvino*.xml"}


def backend_files(folder: str, backend: str, subfolder: str | None = None) -> list[str]:
    """Every file of `backend` under `folder` (or its `subfolder`), as sorted posix paths relative to `folder`."""
    root = Path(folder)
    pattern = f"{subfolder}/**/{FILE_GLOBS[backend]}" if subfolder else f"**/{FILE_GLOBS[backend]}"
    return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))


def choose_file(
    folder: str,
    backend: str,
    *,
    file_name: str | None = None,
    subfolder: str | None = None,
    export: bool | None = None,
) -> tuple[str | None, bool]:
    """(file to load relative to `folder`, or None; whether to export instead).

    As sentence-transformers: export=True always exports; else `subfolder/file_name` (file_name defaults to
    model.onnx / openvino_model.xml), then `<backend>/file_name`; none found exports unless export=False,
    which is an error naming the files there are.
    """
    files = backend_files(folder, backend, subfolder)
    if export:
        return None, True
    name = file_name or DEFAULT_FILES[backend]
    primary = str(PurePosixPath(subfolder, name)) if subfolder else name
    secondary = str(PurePosixPath(subfolder or "", backend, name))
    for candidate in (primary, secondary):
        if candidate in files:
            if len(files) > 1 and file_name is None:
                logger.warning(
                    "several %s files in %s: %s; loading %r (choose with model_kwargs={'file_name': ...})",
                    backend, folder, files, candidate,
                )  # fmt: skip
            return candidate, False
    if export is False:
        raise FileNotFoundError(
            f"{folder}: no {primary!r} or {secondary!r} for backend={backend!r} and export=False; "
            f"{backend} files there: {files or 'none'}"
        )
    logger.warning(
        "%s: no %r for backend=%r, exporting the model (save_pretrained keeps the export)%s",
        folder, name, backend, f"; files there: {files}" if files else "",
    )  # fmt: skip
    return None, True
