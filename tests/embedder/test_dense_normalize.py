"""Dense and Normalize parity with sentence-transformers: forward, on-disk format both ways, activation paths."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from parity_rows import assert_parity
from safetensors.torch import load_file
from sentence_transformers.sentence_transformer.modules import Dense as STDense
from sentence_transformers.sentence_transformer.modules import Normalize as STNormalize
from torch import nn

from embedder.modules.dense import ACTIVATIONS, Dense, resolve_activation
from embedder.modules.normalize import Normalize


def embeddings(rows: int = 5, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def seeded_st_dense(*args, seed: int = 0, **kwargs) -> STDense:
    torch.manual_seed(seed)
    return STDense(*args, **kwargs)


ST_DENSE_CASES = {
    "tanh": dict(in_features=16, out_features=8),
    "gelu-nobias": dict(in_features=16, out_features=8, bias=False, activation_function=nn.GELU()),
    "identity": dict(in_features=16, out_features=24, activation_function=None),
    "prelu": dict(in_features=16, out_features=8, activation_function=nn.PReLU()),
    "residual-same": dict(in_features=16, out_features=16, activation_function=nn.SiLU(), use_residual=True),
    "residual-proj": dict(in_features=16, out_features=8, use_residual=True),
    "tokens": dict(in_features=16, out_features=8, module_input_name="token_embeddings"),
    "renamed": dict(in_features=16, out_features=8, module_output_name="projected"),
}


@pytest.mark.parametrize("case", list(ST_DENSE_CASES))
def test_dense_saved_by_sentence_transformers_loads_in_ours(tmp_path, case):
    kwargs = ST_DENSE_CASES[case]
    theirs = seeded_st_dense(**kwargs)
    theirs.save(str(tmp_path))
    ours = Dense.load(str(tmp_path))
    assert type(ours.activation_function) is type(theirs.activation_function)
    assert ours.get_embedding_dimension() == kwargs["out_features"]
    name_in = kwargs.get("module_input_name", "sentence_embedding")
    name_out = kwargs.get("module_output_name", name_in)
    x = torch.randn(4, 7, 16) if name_in == "token_embeddings" else embeddings()
    with torch.no_grad():
        a = ours({name_in: x.clone()})[name_out]
        b = theirs({name_in: x.clone()})[name_out]
    assert_parity(a, b)


@pytest.mark.parametrize(
    "activation", ["torch.nn.modules.activation.Tanh", "torch.nn.GELU", "torch.nn.Identity", None]
)
@pytest.mark.parametrize("residual", [False, True])
def test_dense_saved_by_us_loads_in_sentence_transformers(tmp_path, activation, residual):
    torch.manual_seed(1)
    ours = Dense(16, 12, activation_function=activation, use_residual=residual)
    ours.save(str(tmp_path))
    theirs = STDense.load(str(tmp_path))
    assert type(theirs.activation_function) is type(ours.activation_function)
    assert theirs.use_residual is residual
    with torch.no_grad():
        assert_parity(
            ours({"sentence_embedding": embeddings()})["sentence_embedding"],
            theirs({"sentence_embedding": embeddings()})["sentence_embedding"],
        )


def test_dense_on_disk_format_matches_sentence_transformers(tmp_path):
    torch.manual_seed(0)
    Dense(16, 8, activation_function=nn.GELU()).save(str(tmp_path / "ours"))
    os.makedirs(tmp_path / "theirs")
    seeded_st_dense(16, 8, activation_function=nn.GELU()).save(str(tmp_path / "theirs"))
    ours_cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs_cfg = json.loads((tmp_path / "theirs" / "config.json").read_text())
    assert (
        ours_cfg["activation_function"]
        == theirs_cfg["activation_function"]
        == "torch.nn.modules.activation.GELU"
    )
    # We leave out keys at their default so that releases before module_input_name existed still load our saves.
    assert ours_cfg == {
        k: v for k, v in theirs_cfg.items() if k not in ("module_input_name", "module_output_name")
    }
    ours_w, theirs_w = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("ours", "theirs"))
    assert {k: v.shape for k, v in ours_w.items()} == {k: v.shape for k, v in theirs_w.items()}
    assert set(ours_w) == {"linear.weight", "linear.bias"}


def test_dense_missing_activation_means_tanh_and_null_means_identity(tmp_path):
    torch.manual_seed(0)
    Dense(4, 2).save(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["activation_function"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert isinstance(Dense.load(str(tmp_path)).activation_function, nn.Tanh)
    assert isinstance(STDense.load(str(tmp_path)).activation_function, nn.Tanh)
    cfg["activation_function"] = None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert isinstance(Dense.load(str(tmp_path)).activation_function, nn.Identity)


@pytest.mark.parametrize(
    "path,cls",
    [
        ("torch.nn.modules.activation.Tanh", nn.Tanh),
        ("torch.nn.Tanh", nn.Tanh),
        ("torch.nn.modules.linear.Identity", nn.Identity),
        ("torch.nn.Identity", nn.Identity),
        ("torch.nn.modules.activation.ReLU", nn.ReLU),
    ],
)
def test_activation_paths(path, cls):
    assert type(resolve_activation(path)) is cls


@pytest.mark.parametrize(
    "path", ["os.system", "torch.nn.Linear", "torch.nn.modules.activation.MultiheadAttention", "Tanh"]
)
def test_bad_activation_is_refused_with_the_allowed_list(tmp_path, path):
    with pytest.raises(ValueError, match=r"not allowed.*Tanh.*GELU"):
        resolve_activation(path)
    (tmp_path / "config.json").write_text(
        json.dumps({"in_features": 2, "out_features": 2, "activation_function": path})
    )
    with pytest.raises(ValueError, match=repr(path).replace(".", r"\.")):
        Dense.load(str(tmp_path))


def test_every_allowed_activation_builds():
    for name in ACTIVATIONS:
        assert isinstance(resolve_activation(f"torch.nn.{name}"), nn.Module)


def test_dense_weight_mismatch_names_the_folder(tmp_path):
    torch.manual_seed(0)
    Dense(4, 2).save(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["bias"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unexpected \['linear.bias'\]"):
        Dense.load(str(tmp_path))


def test_dense_input_width_mismatch():
    with pytest.raises(ValueError, match="width 16, expected in_features=8"):
        Dense(8, 4)({"sentence_embedding": embeddings()})


@pytest.mark.parametrize(
    "names", [{}, {"module_input_name": "token_embeddings"}, {"module_output_name": "unit"}]
)
def test_normalize_both_ways(tmp_path, names):
    theirs = STNormalize(**names)
    os.makedirs(tmp_path / "st")
    theirs.save(str(tmp_path / "st"))
    ours = Normalize.load(str(tmp_path / "st"))
    ours.save(str(tmp_path / "ours"))
    back = STNormalize.load(str(tmp_path / "ours"))
    assert ours.get_config_dict() == theirs.get_config_dict() == back.get_config_dict()
    name_in = names.get("module_input_name", "sentence_embedding")
    name_out = names.get("module_output_name", name_in)
    x = torch.randn(3, 5, 16) if name_in == "token_embeddings" else embeddings() * 7
    a = ours({name_in: x.clone()})[name_out]
    b = theirs({name_in: x.clone()})[name_out]
    assert_parity(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(a.shape[:-1]))


def test_normalize_folder_without_config(tmp_path):
    # Releases before 6 wrote an empty Normalize folder.
    os.makedirs(tmp_path / "2_Normalize")
    ours = Normalize.load(str(tmp_path / "2_Normalize"))
    assert ours.module_input_name == ours.module_output_name == "sentence_embedding"
    assert ours({"token_embeddings": embeddings()}).keys() == {"token_embeddings"}


def test_embedding_model_dense_normalize_both_ways(tiny_bert_dir, sample_texts, tmp_path):
    """Transformer + Pooling + Dense(GELU) + Dense(Tanh, residual) + Normalize: ST <-> EmbeddingModel, encode parity."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling
    from sentence_transformers.sentence_transformer.modules import Transformer as STTransformer

    from embedder import EmbeddingModel

    bert = tiny_bert_dir("bert")
    torch.manual_seed(4)
    modules = [
        STTransformer(bert, max_seq_length=32),
        STPooling(32, ("mean", "cls")),
        STDense(64, 24, activation_function=nn.GELU()),
        STDense(24, 16, use_residual=True),
        STNormalize(),
    ]
    st_model = SentenceTransformer(modules=modules, device="cpu")
    expected = st_model.encode(sample_texts, batch_size=4)
    st_model.save(str(tmp_path / "st"))
    ours = EmbeddingModel(str(tmp_path / "st"), device="cpu")
    assert [type(m) for m in list(ours)[2:]] == [Dense, Dense, Normalize]
    assert ours.get_embedding_dimension() == 16
    got = ours.encode(sample_texts, batch_size=3)
    assert_parity(got, expected)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    ours.save_pretrained(str(tmp_path / "ours"))
    again = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    assert_parity(again.encode(sample_texts, batch_size=5), expected)
