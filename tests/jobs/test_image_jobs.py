"""Image jobs (input.modality: image): bytes or relative paths in, the model's vectors out, bad images quarantined."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.images import ImageReader, image_problem
from jobs.retry import RetryPolicy
from jobs.run import JobError, run_job


def _tiny_clip():
    """tests/embedder/tiny_clip.py by path (tests/ is not a package)."""
    name = "_tiny_clip_helpers"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(__file__), "..", "embedder", "tiny_clip.py")
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


SHAPES = [((32 + 3 * k, 20 + 5 * k), ("RGB", "RGBA", "L")[k % 3]) for k in range(12)]
LIMITS = {"max_image_bytes": 20_000, "max_image_pixels": 10_000}


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _tiny_clip().save_tiny_clip(tmp_path_factory.mktemp("clip-job"))


@pytest.fixture(scope="module")
def clip_oracle(clip_model: str):
    from embedder import EmbeddingModel

    return EmbeddingModel(clip_model, device="cpu")


def good_images() -> list[bytes]:
    """12 small images as PNG bytes (every third one JPEG), of several sizes and modes."""
    clip = _tiny_clip()
    images = clip.random_images(seed=11, shapes=SHAPES)
    return [
        clip.png_bytes(im.convert("RGB"), "JPEG") if k % 3 == 0 else clip.png_bytes(im)
        for k, im in enumerate(images)
    ]


def bad_images() -> dict[int, tuple[bytes | None, str]]:
    """Bad values at fixed rows, with the start of the reason each must be quarantined for."""
    clip = _tiny_clip()
    noisy = clip.png_bytes(clip.random_images(seed=3, shapes=[((100, 90), "RGB")])[0])  # ~27 kB > 20 kB
    wide = clip.png_bytes(clip.random_images(seed=4, shapes=[((400, 30), "L")])[0].point(lambda v: 0))
    return {
        2: (None, "null image"),
        5: (b"", "empty image (0 bytes)"),
        7: (b"\x89PNG\r\n\x1a\n not really", "undecodable image"),
        9: (noisy, f"image too large: {len(noisy)} bytes > policy.max_image_bytes 20000"),
        12: (wide, "image too large: 400x30 = 12000 pixels > policy.max_image_pixels 10000"),
    }


def spec_for(model: str, inp: str, out: str, **input_fields) -> dict:
    return {
        "model": {"name": model},
        "input": {"uri": inp, "id_column": "id", "text_column": "image", "modality": "image", **input_fields},
        "output": {"uri": out, "rows_per_file": 8},
        "compute": {"replicas": 1, "batch_size": 4},
        "policy": {"retries": 2, "on_bad_row": "quarantine", **LIMITS},
    }


def read_vectors(out: str) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(out).sort_by("id")
    col = table.column("embedding").combine_chunks()
    return table.column("id").to_pylist(), col.flatten().to_numpy().reshape(len(col), col.type.list_size)


def test_image_problems_name_the_reason() -> None:
    for value, reason in bad_images().values():
        if value is not None:
            assert image_problem(value, **{"max_bytes": 20_000, "max_pixels": 10_000}).startswith(reason)
    assert all(image_problem(v, max_bytes=20_000, max_pixels=10_000) is None for v in good_images())


def test_reader_resolves_paths_against_the_input_folder(tmp_path) -> None:
    import fsspec

    (tmp_path / "imgs").mkdir()
    data = good_images()[0]
    (tmp_path / "imgs" / "a.png").write_bytes(data)
    reader = ImageReader(
        fsspec.filesystem("file"),
        str(tmp_path),
        max_bytes=10**6,
        max_pixels=10**6,
        policy=RetryPolicy(attempts=1),
    )
    good, bad = reader.check(
        ["imgs/a.png", str(tmp_path / "imgs" / "a.png"), f"file://{tmp_path}/imgs/a.png", "imgs/b.png", 7, ""]
    )
    assert good == [data] * 3
    assert bad == [
        (3, "missing image file 'imgs/b.png'"),
        (4, "not an image or a path (int)"),
        (5, "empty image path"),
    ]
    # A hub dataset has no folder: absolute paths only.
    no_folder = ImageReader(
        fsspec.filesystem("file"), None, max_bytes=10**6, max_pixels=10**6, policy=RetryPolicy(attempts=1)
    )
    good, bad = no_folder.check([str(tmp_path / "imgs" / "a.png"), "imgs/a.png"])
    assert good == [data] and bad[0][0] == 1 and bad[0][1].startswith("relative image path 'imgs/a.png'")


@pytest.mark.usefixtures("ray_session")
def test_job_over_image_bytes_quarantines_bad_ones(tmp_path, clip_model, clip_oracle) -> None:
    images = good_images()
    bad = bad_images()
    values: list[bytes | None] = list(images)
    for row, (value, _) in sorted(bad.items()):
        values.insert(row, value)
    ids = [f"img-{i:02d}" for i in range(len(values))]
    os.makedirs(tmp_path / "in")
    pq.write_table(
        pa.table({"id": ids, "image": pa.array(values, pa.binary())}),
        tmp_path / "in" / "data.parquet",
        row_group_size=6,
    )

    summary = run_job(spec_for(clip_model, str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert summary["rows"] == len(values) == 17
    assert (summary["rows_written"], summary["quarantined"]) == (12, 5)
    errors = pq.read_table(tmp_path / "out" / ".embedjob" / "_errors").sort_by("row").to_pylist()
    assert [(e["file"], e["row"], e["id"]) for e in errors] == [
        ("data.parquet", r, ids[r]) for r in sorted(bad)
    ]
    for e in errors:
        assert e["reason"].startswith(bad[e["row"]][1]), e

    got_ids, got = read_vectors(str(tmp_path / "out"))
    good_ids = [i for r, i in enumerate(ids) if r not in bad]
    assert got_ids == good_ids
    np.testing.assert_allclose(got, clip_oracle.encode(images, batch_size=4), atol=1e-6, rtol=0)


@pytest.mark.usefixtures("ray_session")
def test_job_over_relative_paths_rehashes_changed_images(tmp_path, clip_model, clip_oracle) -> None:
    images = good_images()[:6]
    (tmp_path / "in" / "pics").mkdir(parents=True)
    for k, data in enumerate(images):
        (tmp_path / "in" / "pics" / f"{k}.png").write_bytes(data)
    paths = [f"pics/{k}.png" for k in range(6)] + ["pics/missing.png"]
    ids = [f"p{k}" for k in range(7)]
    pq.write_table(pa.table({"id": ids, "image": paths}), tmp_path / "in" / "list.parquet")

    out1 = str(tmp_path / "out1")
    first = run_job(spec_for(clip_model, str(tmp_path / "in"), out1), progress=False)
    assert (first["rows"], first["rows_written"], first["quarantined"]) == (7, 6, 1)
    errors = pq.read_table(os.path.join(out1, ".embedjob", "_errors")).to_pylist()
    assert [(e["file"], e["row"], e["reason"]) for e in errors] == [
        ("list.parquet", 6, "missing image file 'pics/missing.png'")
    ]
    _, got = read_vectors(out1)
    np.testing.assert_allclose(got, clip_oracle.encode(images), atol=1e-6, rtol=0)

    # Same paths, one image changed: its bytes' hash changes, so only it is embedded again.
    (tmp_path / "in" / "pics" / "2.png").write_bytes(good_images()[8])
    out2 = str(tmp_path / "out2")
    second = run_job({**spec_for(clip_model, str(tmp_path / "in"), out2), "previous": out1}, progress=False)
    assert (second["embedded"], second["reused"]) == (1, 5)
    _, got2 = read_vectors(out2)
    np.testing.assert_allclose(
        got2, clip_oracle.encode(images[:2] + [good_images()[8]] + images[3:]), atol=1e-6, rtol=0
    )


@pytest.mark.usefixtures("ray_session")
def test_bad_image_fails_the_job_under_policy_fail(tmp_path, clip_model) -> None:
    os.makedirs(tmp_path / "in")
    pq.write_table(
        pa.table({"id": ["a", "b"], "image": pa.array([good_images()[1], b""], pa.binary())}),
        tmp_path / "in" / "x.parquet",
    )
    spec = spec_for(clip_model, str(tmp_path / "in"), str(tmp_path / "out"))
    spec["policy"]["on_bad_row"] = "fail"
    with pytest.raises(JobError, match=r"x\.parquet.*row 1: empty image \(0 bytes\)"):
        run_job(spec, progress=False)


@pytest.mark.usefixtures("ray_session")
def test_job_over_image_paths_on_s3(s3_server, tmp_path, clip_model, clip_oracle) -> None:
    fs = s3_server.fs()
    base = s3_server.prefix(name="images")
    images = good_images()[:4]
    for k, data in enumerate(images):
        fs.pipe(f"{base}/data/img/{k}.png", data)
    buf = pa.BufferOutputStream()
    pq.write_table(
        pa.table(
            {
                "id": [f"s{k}" for k in range(5)],
                "image": [f"img/{k}.png" for k in range(4)] + ["img/nope.png"],
            }
        ),
        buf,
    )
    fs.pipe(f"{base}/data/rows.parquet", buf.getvalue().to_pybytes())

    out = str(tmp_path / "out")
    spec = spec_for(clip_model, f"{base}/data", out, storage_options=s3_server.storage_options)
    summary = run_job(spec, progress=False)
    assert (summary["rows"], summary["rows_written"], summary["quarantined"]) == (5, 4, 1)
    _, got = read_vectors(out)
    np.testing.assert_allclose(got, clip_oracle.encode(images), atol=1e-6, rtol=0)


@pytest.mark.usefixtures("ray_session")
def test_text_only_model_refuses_image_jobs(tmp_path, tiny_st_model) -> None:
    os.makedirs(tmp_path / "in")
    pq.write_table(
        pa.table({"id": ["a"], "image": pa.array([good_images()[0]], pa.binary())}),
        tmp_path / "in" / "x.parquet",
    )
    with pytest.raises(Exception, match="input.modality: image, but model .* embeds texts only"):
        run_job(spec_for(tiny_st_model, str(tmp_path / "in"), str(tmp_path / "out")), progress=False)


@pytest.mark.usefixtures("ray_session")
def test_text_job_never_reads_a_text_as_an_image_file(tmp_path, clip_model, clip_oracle) -> None:
    """input.modality text (the default) with a CLIP model: a text naming an image file stays a text."""
    picture = tmp_path / "cat.png"
    picture.write_bytes(good_images()[1])
    texts = [str(picture), "a photo of a cat"]
    os.makedirs(tmp_path / "in")
    pq.write_table(pa.table({"id": ["a", "b"], "text": texts}), tmp_path / "in" / "t.parquet")
    spec = spec_for(clip_model, str(tmp_path / "in"), str(tmp_path / "out"))
    spec["input"].update(text_column="text", modality="text")
    run_job(spec, progress=False)
    _, got = read_vectors(str(tmp_path / "out"))
    np.testing.assert_allclose(got, clip_oracle.encode(texts, image_strings=False), atol=1e-6, rtol=0)
    assert not np.allclose(got[0], clip_oracle.encode(str(picture)), atol=1e-3)  # encode's default: the image
