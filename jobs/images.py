"""Image rows (input.modality: image): read each row's image bytes, inline or by path, and check them.

Outcomes (docs/data-quality.md has the full table); a bad row is quarantined or fails the job like a bad text:
- null value, a value that is neither bytes nor a string: bad.
- a path (relative to the input file's folder, or an absolute path or URI) that does not exist: bad.
- zero bytes, more than policy.max_image_bytes, more than policy.max_image_pixels (read from the header,
  before decoding), or bytes PIL cannot decode: bad.
A good row's value is its image's bytes: what the model embeds and what its row hash covers, so a changed
image re-embeds under the same path.
"""

from __future__ import annotations

import io
import posixpath
import warnings
from typing import Any

from jobs.retry import RetryPolicy, call_with_retries

BadRows = list[tuple[int, str]]
# Images read and checked at once per batch: remote reads are latency-bound and Pillow decodes without the GIL.
READ_THREADS = 16


class ImageReader:
    """Reads and checks one shard's image values; paths resolve against the folder of the shard's input file."""

    def __init__(
        self,
        fs: Any,
        base: str | None,
        *,
        max_bytes: int,
        max_pixels: int,
        policy: RetryPolicy,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.fs = fs
        self.base = base
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.policy = policy
        self.storage_options = storage_options or {}

    def check(self, values: list[Any]) -> tuple[list[bytes], BadRows]:
        """(image bytes of the good rows, in order; (position, reason) of the bad ones)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(READ_THREADS, max(1, len(values)))) as pool:
            results = list(pool.map(self.check_one, values))
        good: list[bytes] = []
        bad: BadRows = []
        for position, (data, reason) in enumerate(results):
            if reason is not None:
                bad.append((position, reason))
            else:
                assert data is not None
                good.append(data)
        return good, bad

    def check_one(self, value: Any) -> tuple[bytes | None, str | None]:
        """(bytes, None) of a good image value; (None, reason) of a bad one."""
        data, reason = self.read(value)
        if data is not None and reason is None:
            reason = image_problem(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        return (None, reason) if reason is not None else (data, None)

    def read(self, value: Any) -> tuple[bytes | None, str | None]:
        """(bytes, None) of an inline image or the file a path names; (None, reason) when there are none."""
        if value is None:
            return None, "null image"
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value), None
        if not isinstance(value, str):
            return None, f"not an image or a path ({type(value).__name__})"
        if not value:
            return None, "empty image path"
        if self.base is None and "://" not in value and not value.startswith("/"):
            return (
                None,
                f"relative image path {value!r}, but the input has no folder (use absolute paths or URIs)",
            )
        fs, path = self.locate(value)
        try:
            size = call_with_retries(lambda: fs.size(path), what=f"image {path}: size", policy=self.policy)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None, f"missing image file {value!r}"
        # Checked before reading, so a huge file is never pulled into memory.
        if size is not None and size > self.max_bytes:
            return None, too_large_bytes(size, self.max_bytes)
        try:
            return call_with_retries(
                lambda: fs.cat_file(path), what=f"image {path}: read", policy=self.policy
            ), None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None, f"missing image file {value!r}"

    def locate(self, value: str) -> tuple[Any, str]:
        """(filesystem, path) of an image path: a URI on its own filesystem, else on the input's, from `base`."""
        if "://" in value:
            import fsspec

            return fsspec.core.url_to_fs(value, **self.storage_options)
        return self.fs, value if value.startswith("/") else posixpath.join(self.base or "", value)


def image_problem(data: bytes, *, max_bytes: int, max_pixels: int) -> str | None:
    """Why `data` cannot be embedded as an image (empty, too large, undecodable), or None when it can."""
    from PIL import Image

    if not data:
        return "empty image (0 bytes)"
    if len(data) > max_bytes:
        return too_large_bytes(len(data), max_bytes)
    try:
        with warnings.catch_warnings():
            # Our pixel limit is the check; PIL's own bomb warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return (
                        f"image too large: {width}x{height} = {width * height} pixels > "
                        f"policy.max_image_pixels {max_pixels}"
                    )
                if width == 0 or height == 0:
                    return f"empty image ({width}x{height} pixels)"
                image.load()
    except Image.UnidentifiedImageError:
        return "undecodable image (not a format Pillow reads)"
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad data
        return f"undecodable image ({type(error).__name__}: {str(error)[:200]})"
    return None


def too_large_bytes(size: int, limit: int) -> str:
    """The reason for an image file over policy.max_image_bytes."""
    return f"image too large: {size} bytes > policy.max_image_bytes {limit}"


def shard_reader(spec: Any, shard: Any, policy: RetryPolicy) -> ImageReader | None:
    """The ImageReader for a shard of a job whose input.modality is image; None for a text job."""
    if spec.input.modality != "image":
        return None
    from jobs.read import open_input_fs

    if spec.input.uri:
        fs, root = open_input_fs(spec.input)
        base: str | None = posixpath.dirname(shard.path) if shard.path else root
    else:  # a hub dataset has no folder: its image paths must be absolute (local) paths or URIs
        import fsspec

        fs, base = fsspec.filesystem("file"), None
    return ImageReader(
        fs,
        base,
        max_bytes=spec.policy.max_image_bytes,
        max_pixels=spec.policy.max_image_pixels,
        policy=policy,
        storage_options=spec.input.storage_options,
    )
