"""EmbeddingModel: load a sentence-transformers folder (local or hub id), encode texts, save the same format."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np
import torch

from embedder import encode_loop, hub, images, outputs
from embedder.backends import Backend, check_backend
from embedder.compute_precision import (
    ComputePrecision,
    check_compute_precision,
    compute_context,
    warn_if_emulated,
)
from embedder.modules import LoadOptions, Module, module_class, type_name_for
from embedder.modules.base import PACKED_KEY, read_json_file
from embedder.modules.router import TEXT_MODALITY
from embedder.outputs import OutputValue
from embedder.quantize import Precision, check_precision, quantize_embeddings
from embedder.similarity import (
    SIMILARITY_NAMES,
    SimilarityName,
    check_similarity_name,
    pairwise,
    similarity_fn,
)

__version__ = "0.1.0"
MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
# What encode returns: vectors (array, tensor or list), or per text token embeddings or feature dicts.
EncodeResult = np.ndarray | torch.Tensor | list[Any] | dict[str, Any]
# sentence-transformers >= 5 always knows these two prompts; an empty one means "no prompt, and no default".
DEFAULT_PROMPTS = {"query": "", "document": ""}


class EmbeddingModel(torch.nn.Sequential):
    """A pipeline of modules (Transformer -> Pooling -> ...) that turns texts into one vector each."""

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        modules: Iterable[Module] | None = None,
        device: str | torch.device | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        truncate_dim: int | None = None,
        similarity_fn_name: SimilarityName | None = None,
        revision: str | None = None,
        cache_folder: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        allow_pickle: bool = False,
        dtype: str | torch.dtype | None = None,
        packed: bool | None = None,
        backend: Backend = "torch",
        compute_precision: ComputePrecision = "float32",
    ) -> None:
        check_backend(backend)
        check_compute_precision(compute_precision)
        if backend != "torch" and compute_precision != "float32":
            raise ValueError(
                f"compute_precision {compute_precision!r} runs torch autocast; backend {backend!r} runs its own "
                "graph (set its precision through model_kwargs, e.g. OpenVINO's ov_config)"
            )
        model_kwargs = dict(model_kwargs or {})
        # Shorthands for model_kwargs: dtype ("float16", torch.bfloat16...) and packed (False: HF forward).
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        if packed is not None:
            model_kwargs["packed"] = packed
        options = LoadOptions(
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            model_kwargs=model_kwargs,
            tokenizer_kwargs=dict(tokenizer_kwargs or {}),
            config_kwargs=dict(config_kwargs or {}),
            backend=backend,
        )
        saved: dict[str, Any] = {}
        module_kwargs: dict[str, Any] = {}
        model_path = None
        if model_name_or_path is not None:
            model_path = hub.resolve_model_path(
                model_name_or_path,
                revision=revision,
                cache_folder=cache_folder,
                token=token,
                local_files_only=local_files_only,
                allow_pickle=allow_pickle,
                backend=backend,
            )
            loaded, saved, module_kwargs = load_pipeline(model_path, options)
        elif modules is not None:
            loaded = OrderedDict((str(i), m) for i, m in enumerate(modules))
        else:
            raise ValueError("EmbeddingModel needs model_name_or_path or modules")
        if not loaded:
            raise ValueError("EmbeddingModel needs at least one module")
        super().__init__(loaded)
        if not callable(getattr(self[0], "preprocess", None)):
            raise ValueError(f"the first module must tokenise (an InputModule), got {type(self[0]).__name__}")
        self.model_path = model_path
        self.module_kwargs = module_kwargs
        self.options = options
        if backend != "torch" and not any(getattr(m, "backend", None) == backend for m in self.modules()):
            names = [type(m).__name__ for m in self]
            raise ValueError(f"backend={backend!r} runs Transformer modules; this pipeline has none: {names}")
        self.backend: str = backend
        self.prompts = {**DEFAULT_PROMPTS, **(saved.get("prompts") or {}), **(prompts or {})}
        self.prompts = {k: ("" if v is None else v) for k, v in self.prompts.items()}
        self.default_prompt_name = default_prompt_name or saved.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name {self.default_prompt_name!r} is not among the prompts {sorted(self.prompts)}"
            )
        self.truncate_dim = truncate_dim if truncate_dim is not None else saved.get("truncate_dim")
        self._similarity_fn_name: str | None = None
        saved_fn = saved.get("similarity_fn_name")
        # A multi-vector save may name e.g. "maxsim": sentence-transformers ignores it for dense models, so do we.
        saved_fn = saved_fn if saved_fn in SIMILARITY_NAMES or saved_fn == "dot_product" else None
        self.similarity_fn_name = similarity_fn_name or saved_fn or "cosine"
        self.stats = {"texts": 0, "tokens": 0, "padded_tokens": 0, "images": 0}

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        first = next(self[0].parameters(), None)
        if first is not None:
            # Later modules (Dense...) must run in the dtype the transformer was loaded in (fp16/bf16 on GPU).
            for module in list(self)[1:]:
                module.to(first.dtype)
        self._target_device = torch.device(device)
        self.to(self._target_device)
        self.eval()
        self.compute_precision = compute_precision

    # --- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the forward pass runs."""
        param = next(self.parameters(), None)
        return param.device if param is not None else self._target_device

    @property
    def compute_precision(self) -> str:
        """The dtype the matrix products run in: float32, or bfloat16/float16 autocast (see compute_precision.py)."""
        return self._compute_precision

    @compute_precision.setter
    def compute_precision(self, value: str) -> None:
        check_compute_precision(value)
        self._compute_precision = value
        warn_if_emulated(value, self.device)

    @property
    def max_seq_length(self) -> int | None:
        """The first module's truncation length in tokens."""
        return getattr(self[0], "max_seq_length", None)

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self[0].max_seq_length = value

    @property
    def similarity_fn_name(self) -> str:
        """The similarity `similarity()` computes: cosine, dot, euclidean or manhattan."""
        return self._similarity_fn_name or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str) -> None:
        value = getattr(value, "value", value)  # accept sentence-transformers' SimilarityFunction enum
        if value == "dot_product":
            value = "dot"
        check_similarity_name(value)
        self._similarity_fn_name = value

    def get_embedding_dimension(self) -> int | None:
        """Width of the vectors encode returns (after truncate_dim), or None when no module says."""
        dim = None
        for module in reversed(list(self)):
            for name in (
                "get_sentence_embedding_dimension",
                "get_embedding_dimension",
                "get_word_embedding_dimension",
            ):
                method = getattr(module, name, None)
                if callable(method):
                    dim = method()
                    break
            if dim is not None:
                break
        if self.truncate_dim is not None:
            return self.truncate_dim if dim is None else min(dim, self.truncate_dim)
        return dim

    get_sentence_embedding_dimension = get_embedding_dimension

    # --- encoding ---------------------------------------------------------------------------------------
    def resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """An explicit prompt wins, then prompt_name's prompt, then the default prompt."""
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"prompt_name {prompt_name!r} is not among the prompts {sorted(self.prompts)}"
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    def encode(
        self,
        inputs: str | Iterable[str] | Any,
        *,
        batch_size: int = 32,
        prompt_name: str | None = None,
        prompt: str | None = None,
        task: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        precision: Precision = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        max_batch_tokens: int | None = None,
        batching: encode_loop.Batching = "auto",
        output_value: OutputValue = "sentence_embedding",
        device: str | torch.device | None = None,
        image_strings: bool = True,
    ) -> EncodeResult:
        """Embed `inputs` (a string -> 1-D vector, a list -> (n, dim)) in input order.

        Texts are tokenised once and sorted longest first. `batching="tokens"` or a `max_batch_tokens` sorts by
        token count, cuts batches by a padded-token budget (see encode_loop.plan) and runs the encoders and
        decoders of embedder/modules/packed.py unpadded (packed): much faster, vectors within ~6e-7 of
        sentence-transformers'. `"sentence-transformers"` sorts by characters and cuts `batch_size` texts per
        batch as it does: bit-identical vectors (so int8 buckets match too). The default, "auto", is "tokens"
        where that stays exact (float32 sentence embeddings, not quantised, from packed-architecture or
        StaticEmbedding pipelines; see encode_loop.resolve_batching), else the latter.
        `truncate_dim` applies before `normalize_embeddings`, quantisation (`precision`) after both.
        `output_value="token_embeddings"` gives each text its real tokens' vectors, None its feature dict (see
        embedder.outputs); both run the padded forward. `device` moves the model there first, for good.
        A CLIP-style model also takes images (see embedder.images.is_image), alone or mixed with texts; an
        image's vector ignores prompts and batching, and lies in the texts' space. As in sentence-transformers, a
        string naming an image file, an http(s) image URL or a data:image URI is that image, unless
        `image_strings=False` (every string a text: for untrusted texts, which must not read files or URLs).

        The model's `compute_precision` (bfloat16/float16) runs the matrix products under autocast, packed or
        padded forward alike; vectors come back float32.
        """
        check_precision(precision)
        outputs.check_output_value(output_value, precision)
        encode_loop.check_batching(batching)
        batching = encode_loop.resolve_batching(
            batching, self, output_value, precision, compute_precision=self.compute_precision
        )
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        takes_images = images.accepts_images(self[0])
        texts, single = as_text_list(inputs, takes_images=takes_images)
        prompt = self.resolve_prompt(prompt, prompt_name)
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if device is not None:
            self._move_to(device)
        sentence = output_value == "sentence_embedding"
        image_at = [
            i for i, v in enumerate(texts) if takes_images and images.is_image(v, strings=image_strings)
        ]
        if image_at:
            if not sentence:
                raise ValueError(
                    f"output_value {output_value!r} is not available for images; use 'sentence_embedding'"
                )
            kwargs = dict(
                batch_size=batch_size, prompt=prompt, task=task, normalize_embeddings=normalize_embeddings,
                truncate_dim=truncate_dim, max_batch_tokens=max_batch_tokens, batching=batching,
                image_strings=image_strings,
            )  # fmt: skip
            embeddings = self._encode_with_images(texts, image_at, keep_on_device=convert_to_tensor, **kwargs)
            return as_result(embeddings, precision, convert_to_tensor, convert_to_numpy, single)
        if not texts:
            return self._empty(precision, convert_to_tensor, convert_to_numpy) if sentence else []

        first = self[0]
        encoded, lengths, order, batches = encode_loop.plan(
            first, texts, prompt=prompt, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
            batching_mode=batching, device=self.device,
        )  # fmt: skip
        if show_progress_bar:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="Batches")
        items = encode_loop.batch_features(
            first, texts, encoded, batches, prompt=prompt, task=task, prefetch=self.device.type == "cuda",
            # The packed forward leaves padding rows at zero and may move a last bit: sentence embeddings only.
            packed=sentence and encode_loop.uses_packed(batching, max_batch_tokens),
        )  # fmt: skip
        self.eval()

        def count(batch: list[int], features: dict[str, Any]) -> None:
            self._count(features, [lengths[i] for i in batch])

        reduced = self.compute_precision != "float32"
        with torch.inference_mode(), compute_context(self.compute_precision, self.device):
            if not sentence:
                rows = outputs.collect(
                    encode_loop.forward(self, items, self.device, on_batch=count), len(texts), output_value,
                    truncate_dim=truncate_dim, precision=precision, convert_to_numpy=convert_to_numpy,
                    convert_to_tensor=convert_to_tensor,
                )  # fmt: skip
                return rows[0] if single else rows
            sorted_emb = encode_loop.run(
                self,
                items,
                self.device,
                # Reduced compute precision still hands back float32 vectors (a Dense head may end in bf16).
                postprocess=lambda emb: encode_loop.finish(
                    emb.float() if reduced else emb, truncate_dim, normalize_embeddings
                ),
                on_batch=count,
                keep_on_device=convert_to_tensor,
            )
        embeddings = encode_loop.unsort(sorted_emb, order)
        return as_result(embeddings, precision, convert_to_tensor, convert_to_numpy, single)

    def _encode_with_images(
        self, values: list[Any], image_at: list[int], *, keep_on_device: bool, **kwargs: Any
    ) -> torch.Tensor:
        """Float32 sentence embeddings of `values` whose positions `image_at` are images and the rest texts."""
        is_image = set(image_at)
        text_at = [i for i in range(len(values)) if i not in is_image]
        truncate_dim, normalize = kwargs["truncate_dim"], kwargs["normalize_embeddings"]
        self.eval()
        with torch.inference_mode():
            image_emb = images.encode_images(
                self, [values[i] for i in image_at], batch_size=kwargs["batch_size"],
                postprocess=lambda emb: encode_loop.finish(emb, truncate_dim, normalize),
                keep_on_device=keep_on_device,
            )  # fmt: skip
        out = image_emb.new_empty((len(values), image_emb.shape[1]))
        out[image_at] = image_emb
        if text_at:
            texts = [values[i] for i in text_at]
            text_emb = self.encode(texts, convert_to_tensor=True, **kwargs)
            out[text_at] = text_emb.to(out.device)
        return out

    def encode_query(self, inputs: str | Iterable[str], **kwargs: Any) -> EncodeResult:
        """encode with the "query" prompt (if none given) and task "query" (routes Router models)."""
        return self._encode_as("query", inputs, **kwargs)

    def encode_document(self, inputs: str | Iterable[str], **kwargs: Any) -> EncodeResult:
        """encode with the "document" prompt (if none given) and task "document" (routes Router models)."""
        return self._encode_as("document", inputs, **kwargs)

    def _encode_as(self, task: str, inputs: str | Iterable[str], **kwargs: Any) -> Any:
        if kwargs.get("prompt_name") is None and kwargs.get("prompt") is None and task in self.prompts:
            kwargs["prompt_name"] = task
        kwargs.setdefault("task", task)
        return self.encode(inputs, **kwargs)

    def tokenize(
        self, texts: str | Iterable[str], *, prompt: str | None = None, task: str | None = None
    ) -> dict[str, Any]:
        """The first module's padded features for `texts` (input_ids, attention_mask...), as sentence-transformers'."""
        batch, _ = as_text_list(texts)
        if not batch:
            return {}
        features = self[0].preprocess(batch, prompt=prompt, task=task)
        features.setdefault("modality", TEXT_MODALITY)
        return features

    def _move_to(self, device: str | torch.device) -> None:
        """Put the model on `device` for this and later calls (sentence-transformers' encode(device=...))."""
        if isinstance(device, (list, tuple)):
            raise ValueError(
                f"device must be one device, got {device!r}; for many devices use the jobs runner"
            )
        # A tensor's device is canonical: "cpu:0" is "cpu", a bare "cuda" the current CUDA device.
        target = torch.empty(0, device=device).device
        self._target_device = target
        if any(t.device != target for t in chain(self.parameters(), self.buffers())):
            self.to(target)

    def _count(self, features: dict[str, Any], lengths: list[int]) -> None:
        """Add this batch's real and padded token counts to `stats`."""
        mask = features.get("attention_mask")
        ids = features.get("input_ids")
        self.stats["texts"] += len(lengths)
        if isinstance(mask, torch.Tensor):
            real = int(mask.sum())
            self.stats["tokens"] += real
            # The packed forward runs its matrix products on the real tokens only: no padding is computed.
            packed = features.get(PACKED_KEY) and getattr(self[0], "packed", False)
            self.stats["padded_tokens"] += real if packed else int(mask.numel())
        elif isinstance(ids, torch.Tensor):
            # Unpadded inputs (StaticEmbedding's flat ids + offsets): every id is a real token.
            self.stats["tokens"] += int(ids.numel())
            self.stats["padded_tokens"] += int(ids.numel())
        else:
            self.stats["tokens"] += sum(lengths)
            self.stats["padded_tokens"] += sum(lengths)

    def _empty(self, precision: str, convert_to_tensor: bool, convert_to_numpy: bool) -> Any:
        dim = self.get_embedding_dimension() or 0
        width = (dim + 7) // 8 if precision.endswith("binary") else dim
        dtype = {"float32": np.float32, "int8": np.int8, "binary": np.int8}.get(precision, np.uint8)
        empty = np.zeros((0, width), dtype=dtype)
        if convert_to_tensor:
            return torch.from_numpy(empty)
        return empty if convert_to_numpy else []

    # --- similarity ---------------------------------------------------------------------------------------
    def similarity(self, a: Any, b: Any) -> torch.Tensor:
        """(len(a), len(b)) scores under similarity_fn_name (euclidean/manhattan are negative distances)."""
        return similarity_fn(self.similarity_fn_name)(a, b)

    def similarity_pairwise(self, a: Any, b: Any) -> torch.Tensor:
        """score(a[i], b[i]) under similarity_fn_name."""
        return pairwise(self.similarity_fn_name, a, b)

    # --- saving / describing ----------------------------------------------------------------------------
    def save_pretrained(self, path: str) -> None:
        """Write the sentence-transformers folder format: modules.json, configs, each module in its folder."""
        os.makedirs(path, exist_ok=True)
        entries = []
        for idx, (name, module) in enumerate(self._modules.items()):
            sub = (
                ""
                if idx == 0 and getattr(module, "save_in_root", False)
                else f"{idx}_{type(module).__name__}"
            )
            module.save(os.path.join(path, sub) if sub else path)
            entry: dict[str, Any] = {"idx": idx, "name": name, "path": sub, "type": type_name_for(module)}
            if self.module_kwargs.get(name):
                entry["kwargs"] = self.module_kwargs[name]
            entries.append(entry)
        _write_json(os.path.join(path, MODULES_FILE), entries)
        _write_json(os.path.join(path, ST_CONFIG_FILE), self._st_config(), sort_keys=True)

    def _st_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "model_type": "SentenceTransformer",
            "__version__": {
                "embedder": __version__,
                "transformers": _version("transformers"),
                "pytorch": torch.__version__,
            },
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self.similarity_fn_name,
        }
        if self.truncate_dim is not None:
            config["truncate_dim"] = self.truncate_dim
        return config

    def describe(self) -> dict[str, Any]:
        """Module types and configs plus the settings that shape the vectors (for job metadata)."""
        param = next(self.parameters(), None)
        first = self[0]
        packed = bool(getattr(first, "packed", False))
        reason = getattr(first, "packed_reason", None) or f"{type(first).__name__} has no packed forward"
        return {
            "model_path": self.model_path,
            "revision": snapshot_revision(self.model_path),
            "modules": [
                {"name": n, "type": type_name_for(m), "config": m.get_config_dict()}
                for n, m in self._modules.items()
            ],
            "embedding_dimension": self.get_embedding_dimension(),
            "max_seq_length": self.max_seq_length,
            "similarity_fn_name": self.similarity_fn_name,
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "truncate_dim": self.truncate_dim,
            "device": str(self.device),
            "dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
            # Whether token batching runs the unpadded forward, and if not, why (the padded one runs).
            "packed": packed,
            "packed_reason": None if packed else reason,
            # Only when not the default, so outputs made before these existed keep their settings fingerprint.
            **({"backend": self.backend} if self.backend != "torch" else {}),
            **({"compute_precision": self.compute_precision} if self.compute_precision != "float32" else {}),
        }


def snapshot_revision(path: str | None) -> str | None:
    """The commit hash when `path` is a huggingface_hub snapshot folder (.../snapshots/<40 hex>), else None."""
    if not path:
        return None
    parent, name = os.path.split(os.path.normpath(path))
    if (
        os.path.basename(parent) == "snapshots"
        and len(name) == 40
        and all(c in "0123456789abcdef" for c in name)
    ):
        return name
    return None


def as_text_list(inputs: Any, *, takes_images: bool = False) -> tuple[list[Any], bool]:
    """(texts, was_single): a string becomes a one-item list; anything else must be an iterable of strings.

    With `takes_images` an image input (embedder.images.is_image) counts as one item, like a string.
    """
    if isinstance(inputs, str) or (takes_images and images.is_image(inputs, strings=False)):
        return [inputs], True
    if inputs is None or isinstance(inputs, (bytes, dict)) or not isinstance(inputs, Iterable):
        raise ValueError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")
    texts = inputs.tolist() if isinstance(inputs, np.ndarray) else list(inputs)
    for i, text in enumerate(texts):
        if not isinstance(text, str) and not (takes_images and images.is_image(text, strings=False)):
            expected = "str or an image" if takes_images else "str"
            raise ValueError(f"inputs[{i}] is {type(text).__name__} ({text!r:.60}), expected {expected}")
    return texts, False


def as_result(
    embeddings: torch.Tensor,
    precision: Precision,
    convert_to_tensor: bool,
    convert_to_numpy: bool,
    single: bool,
) -> Any:
    """Float32 embeddings as encode returns them: quantised to `precision`, as a tensor, array or list."""
    if precision != "float32":
        quantized = torch.from_numpy(quantize_embeddings(embeddings, precision))
        result: Any = (
            quantized if convert_to_tensor else quantized.numpy() if convert_to_numpy else list(quantized)
        )
    elif convert_to_tensor:
        result = embeddings
    elif convert_to_numpy:
        result = embeddings.numpy()
    else:
        result = list(embeddings)
    return result[0] if single else result


def load_pipeline(
    root: str, options: LoadOptions
) -> tuple[OrderedDict[str, Module], dict[str, Any], dict[str, Any]]:
    """Modules, config_sentence_transformers.json and per-module kwargs from a folder (ST format or plain HF)."""
    st_config = read_json_file(os.path.join(root, ST_CONFIG_FILE)) or {}
    modules_file = os.path.join(root, MODULES_FILE)
    if not os.path.exists(modules_file):
        return _default_pipeline(root, options), st_config, {}
    entries = read_json_file(modules_file)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{modules_file}: expected a non-empty list of modules, got {entries!r:.200}")
    modules: OrderedDict[str, Module] = OrderedDict()
    kwargs: dict[str, Any] = {}
    for i, entry in enumerate(entries):
        missing = [k for k in ("path", "type") if k not in entry]
        if missing:
            raise ValueError(f"{modules_file}[{i}]: missing {missing}")
        sub = entry["path"]
        if os.path.isabs(sub) or ".." in sub.replace("\\", "/").split("/"):
            raise ValueError(f"{modules_file}[{i}]: path {sub!r} must stay inside the model folder")
        cls = module_class(entry["type"])
        name = str(entry.get("name", i))
        modules[name] = cls.load(os.path.join(root, sub) if sub else root, options)
        if entry.get("kwargs"):
            kwargs[name] = entry["kwargs"]
    return modules, st_config, kwargs


def _default_pipeline(root: str, options: LoadOptions) -> OrderedDict[str, Module]:
    """A plain transformers folder: Transformer + mean pooling (last-token pooling for causal LMs), as ST does."""
    transformer = module_class("Transformer").load(root, options)
    config = transformer.config
    archs = getattr(config, "architectures", None) or []
    causal = bool(archs) and archs[0].endswith("ForCausalLM") and getattr(config, "is_causal", True)
    pooling = module_class("Pooling")(
        transformer.get_word_embedding_dimension(), pooling_mode="lasttoken" if causal else "mean"
    )
    return OrderedDict([("0", transformer), ("1", pooling)])


def _version(package: str) -> str | None:
    """`package`'s version: the imported module's, else its installed metadata's, else None."""
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return module.__version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_json(file: str, obj: Any, sort_keys: bool = False) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys)
