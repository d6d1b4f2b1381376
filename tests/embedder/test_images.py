"""CLIP-style models: our EmbeddingModel loads sentence-transformers' CLIP folders and matches it on images and texts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tiny_clip import png_bytes, random_images, save_tiny_clip  # noqa: E402  (tests/embedder is on sys.path)

from embedder import EmbeddingModel
from embedder.modules.clip import CLIPModel

TEXTS = ["a photo of a cat", "", "the big red dog runs fast in the city", "hello world", "two birds"]


def assert_parity(ours: np.ndarray, theirs: np.ndarray) -> None:
    """The parity bound: cosine >= 0.99999 and max abs diff <= 1e-4 per row."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape
    cos = (ours * theirs).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
    assert cos.min() >= 0.99999, cos
    assert np.abs(ours - theirs).max() <= 1e-4


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def pair(clip_folder: str):
    from sentence_transformers import SentenceTransformer

    return EmbeddingModel(clip_folder, device="cpu"), SentenceTransformer(clip_folder, device="cpu")


def test_loads_sentence_transformers_clip_folder(clip_folder: str, pair) -> None:
    ours, theirs = pair
    modules = json.load(open(os.path.join(clip_folder, "modules.json")))
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer"]  # what ST 6 writes
    assert isinstance(ours[0], CLIPModel) and len(ours) == 1
    assert ours.get_embedding_dimension() == theirs.get_embedding_dimension() == 16
    assert ours.max_seq_length == theirs.max_seq_length == 32


def test_image_parity(pair) -> None:
    ours, theirs = pair
    images = random_images(seed=1)
    assert {im.mode for im in images} == {"RGB", "RGBA", "L"}
    assert_parity(ours.encode(images, batch_size=2), theirs.encode(images, batch_size=2))
    assert_parity(
        ours.encode(images, normalize_embeddings=True), theirs.encode(images, normalize_embeddings=True)
    )
    one = ours.encode(images[1])
    assert one.shape == (16,)
    assert_parity(one[None], theirs.encode([images[1]]))


def test_text_parity(pair) -> None:
    ours, theirs = pair
    long_text = " ".join(["cat"] * 100)  # past the 32-token limit: truncated as sentence-transformers does
    texts = TEXTS + [long_text]
    assert_parity(ours.encode(texts, batch_size=2), theirs.encode(texts, batch_size=2))
    assert_parity(ours.encode(texts, batching="tokens"), theirs.encode(texts))
    assert_parity(ours.encode(texts, prompt="query: "), theirs.encode(texts, prompt="query: "))


def test_images_as_bytes_paths_and_dicts(pair, tmp_path) -> None:
    ours, theirs = pair
    images = random_images(seed=2)
    expected = theirs.encode(images)
    assert_parity(ours.encode([png_bytes(im) for im in images]), expected)
    assert_parity(ours.encode([{"image": im} for im in images]), expected)
    paths = []
    for k, im in enumerate(images):
        paths.append(str(tmp_path / f"img{k}.png"))
        im.save(paths[-1])
    # sentence-transformers takes a string naming an existing image file as that image.
    assert_parity(ours.encode(paths), theirs.encode(paths))
    # transformers' load_image drops a path's alpha before the processor sees it; RGB files read as their pixels.
    rgb = [k for k, im in enumerate(images) if im.mode == "RGB"]
    assert_parity(ours.encode(paths)[rgb], expected[rgb])
    # image_strings=False: a string is always a text (the runner's texts never read files or URLs).
    as_texts = ours.encode(paths[:2], image_strings=False)
    for path in paths[:2]:
        os.remove(path)  # with no file behind it, sentence-transformers reads the string as a text too
    assert_parity(as_texts, theirs.encode(paths[:2]))
    assert_parity(as_texts, ours.encode(paths[:2]))


def test_mixed_images_and_texts_keep_input_order(pair) -> None:
    ours, theirs = pair
    images = random_images(seed=3)
    mixed = [images[0], TEXTS[0], images[1], TEXTS[2], TEXTS[3], images[2]]
    got = ours.encode(mixed, batch_size=2, normalize_embeddings=True)
    image_rows, text_rows = [0, 2, 5], [1, 3, 4]
    assert_parity(got[image_rows], theirs.encode([mixed[i] for i in image_rows], normalize_embeddings=True))
    assert_parity(got[text_rows], theirs.encode([mixed[i] for i in text_rows], normalize_embeddings=True))
    tensor = ours.encode(mixed, convert_to_tensor=True, truncate_dim=8)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (6, 8)
    int8 = ours.encode(mixed, precision="int8")
    assert int8.dtype == np.int8 and int8.shape == (6, 16)
    assert ours.stats["images"] > 0


def test_save_round_trip(pair, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    ours, theirs = pair
    ours.save_pretrained(str(tmp_path / "saved"))
    again = EmbeddingModel(str(tmp_path / "saved"), device="cpu")
    st_again = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    images = random_images(seed=4)
    assert_parity(again.encode(images), theirs.encode(images))
    assert_parity(st_again.encode(images), theirs.encode(images))
    assert_parity(st_again.encode(TEXTS), theirs.encode(TEXTS))


def test_legacy_clip_model_folder(clip_folder: str, tmp_path) -> None:
    """Folders of sentence-transformers' old CLIPModel module: 0_CLIPModel/ with no modality config."""
    from sentence_transformers import SentenceTransformer

    root = tmp_path / "legacy"
    sub = root / "0_CLIPModel"
    sub.mkdir(parents=True)
    for name in os.listdir(clip_folder):
        if name not in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
            os.link(os.path.join(clip_folder, name), sub / name)
    modules = [
        {"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    ours, theirs = EmbeddingModel(str(root), device="cpu"), SentenceTransformer(str(root), device="cpu")
    images = random_images(seed=5)
    assert_parity(ours.encode(images), theirs.encode(images))
    assert_parity(ours.encode(TEXTS), theirs.encode(TEXTS))


def test_bad_inputs_name_the_problem(pair, tiny_st_model: str) -> None:
    ours, _ = pair
    image = random_images()[0]
    with pytest.raises(ValueError, match="not available for images"):
        ours.encode([image], output_value="token_embeddings")
    with pytest.raises(ValueError, match=r"inputs\[1\] is int .*expected str or an image"):
        ours.encode(["a", 3])
    text_only = EmbeddingModel(tiny_st_model, device="cpu")
    with pytest.raises(ValueError, match=r"inputs\[0\] is .*expected str"):
        text_only.encode([image])
    with pytest.raises(Exception, match="cannot identify image"):
        ours.encode([b"not an image"])


def test_bad_modality_config_is_refused(clip_folder: str, tmp_path) -> None:
    import shutil

    folder = shutil.copytree(clip_folder, tmp_path / "bad")
    config_file = folder / "sentence_bert_config.json"
    config = json.loads(config_file.read_text())
    config["modality_config"]["image"]["method"] = "save_pretrained"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"modality_config.image.method 'save_pretrained' is not supported"):
        EmbeddingModel(str(folder), device="cpu")
