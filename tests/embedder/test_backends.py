"""ONNX Runtime and OpenVINO backends: export, load (ours and sentence-transformers' exports), file choice, errors."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from parity_rows import assert_parity
from sentence_transformers import SentenceTransformer

from embedder import EmbeddingModel
from embedder.backends import BACKENDS
from embedder.backends.files import choose_file

# A tiny BERT whose onnx/ and openvino/ files sentence-transformers exported (see data/make_st_exported.py).
ST_EXPORTED = Path(__file__).parent / "data" / "st_exported_bert"
GRAPH_FILES = {"onnx": "onnx/model.onnx", "openvino": "openvino/openvino_model.xml"}
EXPORTED = ("onnx", "openvino")


def graph_interface(file: str, backend: str) -> tuple:
    """(inputs as (name, type, dims), outputs as (name, type, dims)) of a model file; unknown dims as None."""
    if backend == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(file, providers=["CPUExecutionProvider"])
        dims = lambda shape: tuple(d if isinstance(d, int) else None for d in shape)  # noqa: E731
        return (
            tuple((i.name, i.type, dims(i.shape)) for i in session.get_inputs()),
            tuple((o.name, o.type, dims(o.shape)) for o in session.get_outputs()),
        )
    import openvino as ov

    model = ov.Core().read_model(file)
    dims = lambda shape: tuple(d.get_length() if d.is_static else None for d in shape)  # noqa: E731
    return (
        tuple(
            (i.get_any_name(), str(i.get_element_type()), dims(i.get_partial_shape())) for i in model.inputs
        ),
        tuple(
            (o.get_any_name(), str(o.get_element_type()), dims(o.get_partial_shape())) for o in model.outputs
        ),
    )


@pytest.fixture
def st_exported(tmp_path: Path) -> str:
    """A writable copy of the sentence-transformers-exported folder."""
    return str(shutil.copytree(ST_EXPORTED, tmp_path / "st_exported"))


def test_the_job_spec_offers_the_same_backends():
    from jobs.spec import MODEL_BACKENDS

    assert MODEL_BACKENDS == BACKENDS == ("torch", "onnx", "openvino")


def test_a_bad_backend_lists_the_choices(tiny_bert_dir):
    with pytest.raises(
        ValueError, match=r"backend 'tensorrt' is not supported; valid: \('torch', 'onnx', 'openvino'\)"
    ):
        EmbeddingModel(tiny_bert_dir(st=True), backend="tensorrt", device="cpu")


def test_a_backend_needs_a_transformer_module(tmp_path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    from embedder.modules.static_embedding import StaticEmbedding

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    static = StaticEmbedding(tok, embedding_weights=torch.zeros(2, 4))
    with pytest.raises(
        ValueError,
        match=r"backend='onnx' runs Transformer modules; this pipeline has none: \['StaticEmbedding'\]",
    ):
        EmbeddingModel(modules=[static], backend="onnx", device="cpu")


@pytest.mark.parametrize("backend", EXPORTED)
def test_an_export_matches_torch_and_sentence_transformers(backend, tiny_bert_dir, sample_texts, caplog):
    path = tiny_bert_dir(st=True, normalize=True)
    with caplog.at_level(logging.WARNING, logger="embedder.backends.files"):
        ours = EmbeddingModel(path, backend=backend, device="cpu")
    assert "exporting the model" in caplog.text
    assert ours[0].auto_model is None and ours.backend == backend
    vectors = ours.encode(sample_texts)
    assert_parity(vectors, EmbeddingModel(path, device="cpu").encode(sample_texts))
    assert_parity(vectors, SentenceTransformer(path, device="cpu").encode(sample_texts))
    # A token budget still works, on the padded forward.
    assert_parity(ours.encode(sample_texts, max_batch_tokens=40), vectors)
    described = ours.describe()
    assert (described["packed"], described["packed_reason"], described["backend"]) == (
        False,
        f"backend {backend!r}",
        backend,
    )
    assert "backend" not in EmbeddingModel(path, device="cpu").describe()


@pytest.mark.parametrize("backend", EXPORTED)
def test_default_batching_keeps_sentence_transformers_batches(backend, st_exported, sample_texts):
    from embedder import encode_loop

    ours = EmbeddingModel(st_exported, backend=backend, device="cpu")
    assert encode_loop.resolve_batching("auto", ours, "sentence_embedding") == "sentence-transformers"
    theirs = SentenceTransformer(st_exported, device="cpu")
    assert_parity(ours.encode(sample_texts * 5, batch_size=4), theirs.encode(sample_texts * 5, batch_size=4))


@pytest.mark.parametrize("backend", EXPORTED)
def test_a_saved_export_reloads_without_torch_weights(backend, tiny_bert_dir, tmp_path, sample_texts):
    path = tiny_bert_dir(st=True)
    exported = EmbeddingModel(path, backend=backend, device="cpu")
    saved = str(tmp_path / "saved")
    exported.save_pretrained(saved)
    assert os.path.exists(os.path.join(saved, GRAPH_FILES[backend]))
    assert not os.path.exists(os.path.join(saved, "model.safetensors"))
    reloaded = EmbeddingModel(saved, backend=backend, device="cpu", model_kwargs={"export": False})
    assert reloaded[0].runner.file == os.path.join(saved, GRAPH_FILES[backend])
    np.testing.assert_array_equal(reloaded.encode(sample_texts), exported.encode(sample_texts))
    # The graph has sentence-transformers' interface, so its loaders take our folders too.
    ours = graph_interface(os.path.join(saved, GRAPH_FILES[backend]), backend)
    theirs = graph_interface(str(ST_EXPORTED / GRAPH_FILES[backend]), backend)
    assert ours == theirs
    assert [name for name, _, _ in ours[0]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [name for name, _, _ in ours[1]] == ["last_hidden_state"]


@pytest.mark.parametrize("backend", EXPORTED)
def test_a_folder_sentence_transformers_exported_loads(backend, st_exported, sample_texts):
    ours = EmbeddingModel(st_exported, backend=backend, device="cpu", model_kwargs={"export": False})
    assert ours[0].runner.file == os.path.join(st_exported, GRAPH_FILES[backend])
    assert_parity(
        ours.encode(sample_texts), SentenceTransformer(st_exported, device="cpu").encode(sample_texts)
    )


def test_file_name_chooses_among_several(st_exported, tmp_path, tiny_bert_dir, sample_texts, caplog):
    # model_O4.onnx is another model's graph, so its vectors show which file was loaded.
    other = EmbeddingModel(tiny_bert_dir("other", st=True, seed=3), backend="onnx", device="cpu")
    other.save_pretrained(str(tmp_path / "other_saved"))
    shutil.copyfile(
        tmp_path / "other_saved" / "onnx" / "model.onnx", os.path.join(st_exported, "onnx", "model_O4.onnx")
    )
    o4 = other.encode(sample_texts)

    with caplog.at_level(logging.WARNING, logger="embedder.backends.files"):
        default = EmbeddingModel(st_exported, backend="onnx", device="cpu")
    assert "several onnx files" in caplog.text and "onnx/model_O4.onnx" in caplog.text
    assert default[0].runner.file.endswith(os.path.join("onnx", "model.onnx"))
    assert not np.allclose(default.encode(sample_texts), o4, atol=1e-3)
    for kwargs in (
        {"file_name": "model_O4.onnx"},
        {"file_name": "onnx/model_O4.onnx"},
        {"subfolder": "onnx", "file_name": "model_O4.onnx"},
    ):
        chosen = EmbeddingModel(st_exported, backend="onnx", device="cpu", model_kwargs=kwargs)
        assert chosen[0].runner.file.endswith(os.path.join("onnx", "model_O4.onnx")), kwargs
        np.testing.assert_allclose(chosen.encode(sample_texts), o4, atol=1e-6)
    # A file at the folder's root wins over onnx/ (sentence-transformers checks the root first).
    shutil.copyfile(
        os.path.join(st_exported, "onnx", "model_O4.onnx"), os.path.join(st_exported, "model.onnx")
    )
    assert choose_file(st_exported, "onnx") == ("model.onnx", False)


def test_choose_file_follows_sentence_transformers_rules(tmp_path):
    for name in (
        "onnx/model.onnx",
        "onnx/model_qint8_avx512_vnni.onnx",
        "openvino/openvino_model.xml",
        "openvino/openvino_model_qint8_quantized.xml",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    folder = str(tmp_path)
    assert choose_file(folder, "onnx") == ("onnx/model.onnx", False)
    assert choose_file(folder, "onnx", file_name="model_qint8_avx512_vnni.onnx") == (
        "onnx/model_qint8_avx512_vnni.onnx",
        False,
    )
    assert choose_file(folder, "openvino") == ("openvino/openvino_model.xml", False)
    assert choose_file(folder, "openvino", file_name="openvino/openvino_model_qint8_quantized.xml") == (
        "openvino/openvino_model_qint8_quantized.xml",
        False,
    )
    assert choose_file(folder, "onnx", export=True) == (None, True)
    assert choose_file(folder, "onnx", file_name="model_O4.onnx") == (None, True)
    with pytest.raises(FileNotFoundError) as err:
        choose_file(folder, "onnx", file_name="model_O4.onnx", export=False)
    message = str(err.value)
    assert "'model_O4.onnx'" in message and "'onnx/model_O4.onnx'" in message
    assert "['onnx/model.onnx', 'onnx/model_qint8_avx512_vnni.onnx']" in message


def test_a_missing_file_without_export_names_the_files_there(st_exported):
    with pytest.raises(FileNotFoundError, match=r"no 'model_O4\.onnx'.*export=False.*\['onnx/model\.onnx'\]"):
        EmbeddingModel(
            st_exported,
            backend="onnx",
            device="cpu",
            model_kwargs={"file_name": "model_O4.onnx", "export": False},
        )


def test_export_true_exports_even_when_a_file_exists(st_exported, sample_texts):
    model = EmbeddingModel(st_exported, backend="onnx", device="cpu", model_kwargs={"export": True})
    assert not model[0].runner.file.startswith(st_exported)
    assert_parity(
        model.encode(sample_texts), SentenceTransformer(st_exported, device="cpu").encode(sample_texts)
    )


@pytest.mark.parametrize(("backend", "package"), [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_package_says_what_to_install(backend, package, st_exported, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(
        ImportError, match=rf"backend='{backend}' needs {package}: pip install 'embedjob\[{backend}\]'"
    ):
        EmbeddingModel(st_exported, backend=backend, device="cpu")


def test_a_provider_onnxruntime_lacks_lists_the_available(st_exported):
    with pytest.raises(
        ValueError,
        match=r"provider 'CUDAExecutionProvider' is not available in onnxruntime; valid: \(.*'CPUExecutionProvider'",
    ):
        EmbeddingModel(
            st_exported, backend="onnx", device="cpu", model_kwargs={"provider": "CUDAExecutionProvider"}
        )


def test_openvino_runs_float32_unless_ov_config_says_otherwise(st_exported):
    default = EmbeddingModel(st_exported, backend="openvino", device="cpu")
    assert str(default[0].runner.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"}
    chosen = EmbeddingModel(st_exported, backend="openvino", device="cpu", model_kwargs={"ov_config": config})
    assert str(chosen[0].runner.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
