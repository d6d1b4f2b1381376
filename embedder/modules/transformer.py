"""Transformer: a Hugging Face AutoModel + AutoTokenizer producing token embeddings (the usual first module)."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, ClassVar

import torch
import transformers
from packaging.version import Version
from transformers import AutoConfig, AutoModel, AutoTokenizer

from embedder.backends import Backend, check_backend
from embedder.backends.load import load_runner, split_backend_kwargs
from embedder.backends.runtime import BackendRunner
from embedder.batching import pad_rows
from embedder.modules.base import PACKED_KEY, Features, InputModule, LoadOptions, load_config, save_config
from embedder.modules.packed import PACKED_ATTENTION, PackedForward, packed_forward, packed_support

CONFIG_FILE = "sentence_bert_config.json"
# Older sentence-transformers releases named the module config after the architecture.
LEGACY_CONFIG_FILES = (
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Inputs a Hugging Face forward pass takes from our features; the rest (prompt_length, task...) is ours.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# transformers renamed `torch_dtype` to `dtype` in 4.56.
DTYPE_KEY = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"

logger = logging.getLogger(__name__)


class Transformer(InputModule):
    """Tokenise texts and run a transformers AutoModel; outputs `token_embeddings` (+ `all_layer_embeddings`)."""

    config_keys: ClassVar[tuple[str, ...]] = ("max_seq_length", "do_lower_case")
    config_file_name: ClassVar[str] = CONFIG_FILE
    save_in_root: ClassVar[bool] = True

    def __init__(
        self,
        model_name_or_path: str,
        *,
        max_seq_length: int | None = None,
        do_lower_case: bool = False,
        model_args: dict[str, Any] | None = None,
        tokenizer_args: dict[str, Any] | None = None,
        config_args: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        packed: bool = True,
        backend: Backend = "torch",
    ) -> None:
        super().__init__()
        path = model_name_or_path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: Transformer needs a local model folder (resolve hub ids first)")
        self.backend = check_backend(backend)
        model_args = dict(model_args or {})
        backend_args: dict[str, Any] = {}
        if self.backend != "torch":
            backend_args, model_args = split_backend_kwargs(model_args)
        model_args = _with_dtype(model_args)
        # Ours, not a from_pretrained argument: model_kwargs={"packed": False} turns the unpadded forward off.
        packed = bool(model_args.pop("packed", packed))
        tokenizer_args = dict(tokenizer_args or {})
        config_args = dict(config_args or {})
        self.do_lower_case = bool(do_lower_case)
        self._prompt_lengths: dict[str, int] = {}

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **config_args)
        if "use_cache" not in config_args and getattr(config, "use_cache", False):
            # Embedding never generates: a KV cache would only hold memory (decoder backbones).
            config.use_cache = False
        self.config = config

        def load_torch() -> torch.nn.Module:
            return AutoModel.from_pretrained(
                path,
                config=config,
                trust_remote_code=trust_remote_code,
                use_safetensors=_uses_safetensors(path, allow_pickle),
                **model_args,
            )

        # Under ONNX Runtime / OpenVINO the torch weights are only read to export a graph, never kept.
        self.auto_model: Any = load_torch() if self.backend == "torch" else None
        self.runner: BackendRunner | None = None
        if self.backend != "torch":
            self.runner = load_runner(path, self.backend, backend_args, load_torch)
        else:
            self.config = self.auto_model.config  # from_pretrained may copy it and set the attention kind
        self.tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, **tokenizer_args
        )
        if max_seq_length is None and "model_max_length" not in tokenizer_args:
            max_seq_length = self.tokenizer.model_max_length
            max_pos = getattr(config, "max_position_embeddings", None)
            # xlnet-style configs use -1 for "no limit"; a tokenizer without a limit reports ~1e30.
            if isinstance(max_pos, int) and max_pos > 0:
                max_seq_length = min(max_seq_length, max_pos)
        elif max_seq_length is None:
            max_seq_length = self.tokenizer.model_max_length
        self.max_seq_length = max_seq_length
        if self.do_lower_case:
            _add_lowercase(self.tokenizer)
        if self.runner is not None:
            self._input_keys = self.runner.input_names
        else:
            forward_params = inspect.signature(self.auto_model.forward).parameters
            self._input_keys = (
                tuple(k for k in MODEL_INPUT_KEYS if k in forward_params) or MODEL_INPUT_KEYS[:2]
            )
        self._packed: PackedForward | None = None
        self.packed_reason: str | None = None
        self.packed = packed

    @property
    def packed(self) -> bool:
        """Whether forward can skip padding (see modules/packed.py; same token embeddings); `packed_reason` says why not."""
        return self._packed is not None

    @packed.setter
    def packed(self, value: bool) -> None:
        if self.runner is not None:
            reason = f"backend {self.backend!r}"
        else:
            reason = packed_support(self.auto_model) if value else "turned off (packed=False)"
        self._packed = packed_forward(self.auto_model) if reason is None else None
        self.packed_reason = reason
        if value and reason is not None and self.runner is None:
            # Said once per load, not per batch: token batching still works, on the padded forward.
            logger.info(
                "%s has no packed (unpadded) forward; token batching runs the padded one: %s",
                type(self.auto_model).__name__,
                reason,
            )

    @property
    def rowwise(self) -> bool:  # type: ignore[override]
        """Whether asking for the packed forward gets it: each text then sees only its own real tokens."""
        config = self.config
        return (
            self._packed is not None
            and not getattr(config, "output_hidden_states", False)
            and not getattr(config, "output_attentions", False)
            and getattr(config, "_attn_implementation", None) in PACKED_ATTENTION
        )

    def _use_packed(self, inputs: dict[str, Any]) -> bool:
        return (
            self.rowwise
            and not self.auto_model.training
            and isinstance(inputs.get("attention_mask"), torch.Tensor)
            and isinstance(inputs.get("input_ids"), torch.Tensor)
            and inputs["input_ids"].dim() == 2
        )

    @property
    def max_seq_length(self) -> int | None:
        """Inputs are truncated to this many tokens (special tokens included)."""
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"max_seq_length must be a positive int or None, got {value!r}")
        self._max_seq_length = value
        self._prompt_lengths = {}
        if value is not None:
            self.tokenizer.model_max_length = value

    def _tokenize(self, texts: list[str], **kwargs: Any) -> dict[str, Any]:
        if self.do_lower_case and not getattr(self.tokenizer, "is_fast", False):
            texts = [t.lower() for t in texts]
        return self.tokenizer(texts, truncation="longest_first", max_length=self.max_seq_length, **kwargs)

    def preprocess(self, texts: list[str], *, prompt: str | None = None, task: str | None = None) -> Features:
        """Tokenise `prompt + text` for each text, truncated to max_seq_length and padded to the batch's longest."""
        if prompt:
            texts = [prompt + t for t in texts]
        features: Features = dict(self._tokenize(list(texts), padding=True, return_tensors="pt"))
        if prompt:
            features["prompt_length"] = self.prompt_length(prompt)
        if task is not None:
            features["task"] = task
        return features

    def prompt_length(self, prompt: str) -> int:
        """Tokens the prompt takes at the start of each input: its tokenisation minus a trailing special token."""
        if prompt not in self._prompt_lengths:
            ids = self._tokenize([prompt])["input_ids"][0]
            n = len(ids)
            # The prompt is followed by the text, so a closing [SEP]/</s> is not part of it; [CLS]/<s> is.
            if ids and ids[-1] in set(self.tokenizer.all_special_ids):
                n -= 1
            self._prompt_lengths[prompt] = n
        return self._prompt_lengths[prompt]

    def text_lengths(self, texts: list[str]) -> list[int]:
        """Token counts per text (special tokens included, after truncation): what batching sorts and budgets by."""
        return [len(ids) for ids in self._tokenize(list(texts))["input_ids"]]

    def tokenize_unpadded(self, texts: list[str], *, prompt: str | None = None) -> dict[str, list] | None:
        """Token ids per text (`prompt + text`, truncated, unpadded), for `collate`; None if we cannot pad them."""
        if self.tokenizer.pad_token_id is None:
            return None
        if prompt:
            texts = [prompt + t for t in texts]
        encoded = self._tokenize(list(texts), return_attention_mask=False)
        return {k: v for k, v in encoded.items() if k in ("input_ids", "token_type_ids")}

    def collate(
        self, encoded: dict[str, list], rows: list[int], *, prompt: str | None = None, task: str | None = None
    ) -> Features:
        """The features `preprocess` would give for texts `rows` of a `tokenize_unpadded` result (same tensors)."""
        tok = self.tokenizer
        left = tok.padding_side == "left"
        ids = [encoded["input_ids"][i] for i in rows]
        input_ids, mask = pad_rows(ids, tok.pad_token_id, left=left)
        features: Features = {"input_ids": input_ids}
        if "token_type_ids" in encoded:
            types = [encoded["token_type_ids"][i] for i in rows]
            features["token_type_ids"] = pad_rows(types, tok.pad_token_type_id, left=left)[0]
        if "attention_mask" in tok.model_input_names:
            features["attention_mask"] = mask
        if prompt:
            features["prompt_length"] = self.prompt_length(prompt)
        if task is not None:
            features["task"] = task
        return features

    def forward(self, features: Features) -> Features:
        """Run the model; add `token_embeddings` and, when the config asks for hidden states, `all_layer_embeddings`."""
        inputs = {k: features[k] for k in self._input_keys if k in features}
        if self.runner is not None:
            features["token_embeddings"] = self.runner(inputs)
            return features
        # Only on request (encode's token batching): its padding rows hold zeros, not HF's values, and its
        # vectors differ from HF's in the last bit now and then, which can move an int8 bucket edge.
        if features.get(PACKED_KEY) and self._use_packed(inputs):
            features["token_embeddings"] = self._packed(**inputs)
            return features
        output = self.auto_model(**inputs, return_dict=True)
        features["token_embeddings"] = output[0]
        if (
            getattr(self.auto_model.config, "output_hidden_states", False)
            and output.get("hidden_states") is not None
        ):
            features["all_layer_embeddings"] = output["hidden_states"]
        return features

    def get_word_embedding_dimension(self) -> int:
        """Width of the token embeddings (the model's hidden size)."""
        return int(self.config.hidden_size)

    get_embedding_dimension = get_word_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        """What sentence_bert_config.json holds."""
        return {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}

    def save(self, path: str) -> None:
        """Write the Hugging Face model (safetensors) and tokenizer files plus sentence_bert_config.json into `path`."""
        os.makedirs(path, exist_ok=True)
        if self.runner is not None:
            # As sentence-transformers: the config plus the graph in <backend>/, no torch weights.
            self.config.save_pretrained(path)
            self.runner.save(path)
        else:
            self.auto_model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        save_config(self.get_config_dict(), path, CONFIG_FILE)

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> Transformer:
        """Build from a folder holding HF files and (optionally) sentence_bert_config.json; caller options win."""
        options = options or LoadOptions()
        config = load_config(path, CONFIG_FILE)
        for legacy in LEGACY_CONFIG_FILES:
            if config:
                break
            config = load_config(path, legacy)
        from embedder.modules.clip import CLIPModel, is_multimodal_config

        if is_multimodal_config(config):
            # sentence-transformers >= 5 saves CLIP as a Transformer whose config names a method per modality.
            return CLIPModel.load(path, options)  # type: ignore[return-value]
        # sentence-transformers >= 5 writes *_kwargs, older versions *_args; both mean the same.
        args = {}
        for new, old in (
            ("model_kwargs", "model_args"),
            ("processor_kwargs", "tokenizer_args"),
            ("config_kwargs", "config_args"),
        ):
            merged = {**(config.get(old) or {}), **(config.get(new) or {})}
            # A config file never gets to switch on remote code; only the caller can.
            merged.pop("trust_remote_code", None)
            args[old] = merged
        _check_task(path, config)
        return cls(
            path,
            max_seq_length=config.get("max_seq_length"),
            do_lower_case=bool(config.get("do_lower_case", False)),
            model_args={**args["model_args"], **options.model_kwargs},
            tokenizer_args={**args["tokenizer_args"], **options.tokenizer_kwargs},
            config_args={**args["config_args"], **options.config_kwargs},
            trust_remote_code=options.trust_remote_code,
            allow_pickle=options.allow_pickle,
            backend=options.backend,
        )

    def __repr__(self) -> str:
        if self.runner is not None:
            return (
                f"Transformer({self.get_config_dict()}, backend={self.backend!r}, file={self.runner.file!r})"
            )
        return f"Transformer({self.get_config_dict()}, architecture={type(self.auto_model).__name__})"


def _uses_safetensors(path: str, allow_pickle: bool) -> bool:
    """True when `path` has safetensors weights; pickle weights only pass with allow_pickle."""
    if any(os.path.exists(os.path.join(path, f)) for f in SAFETENSORS_FILES):
        return True
    pickled = [f for f in PICKLE_FILES if os.path.exists(os.path.join(path, f))]
    if pickled and not allow_pickle:
        raise ValueError(
            f"{os.path.join(path, pickled[0])}: weights are stored as a pickle, which can run arbitrary code on "
            "load; convert them to safetensors or pass allow_pickle=True if you trust this folder"
        )
    if not pickled:
        raise FileNotFoundError(
            f"{path}: no model weights ({SAFETENSORS_FILES[0]} or {PICKLE_FILES[0]}); from the hub, pickle "
            "weights are only downloaded with allow_pickle=True"
        )
    return False


def _with_dtype(model_args: dict[str, Any]) -> dict[str, Any]:
    """Accept `torch_dtype` or `dtype`, as a torch.dtype, a name like "float16", or "auto"."""
    value = model_args.pop("torch_dtype", None)
    value = model_args.pop("dtype", value)
    if value is None:
        return model_args
    if isinstance(value, str) and value != "auto":
        name = value.removeprefix("torch.")
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise ValueError(
                f"model_kwargs dtype {value!r} is not a torch dtype (e.g. 'float16', 'bfloat16', 'auto')"
            )
        value = getattr(torch, name)
    model_args[DTYPE_KEY] = value
    return model_args


def _add_lowercase(tokenizer: Any) -> None:
    """Make a fast tokenizer lowercase its input first (slow tokenizers get lowercased text instead)."""
    if not getattr(tokenizer, "is_fast", False):
        return
    from tokenizers.normalizers import Lowercase, Sequence

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    parts = list(current) if isinstance(current, Sequence) else ([current] if current is not None else [])
    if not any(isinstance(p, Lowercase) for p in parts):
        backend.normalizer = Sequence([Lowercase(), *parts])


def _check_task(path: str, config: dict[str, Any]) -> None:
    """Refuse sentence-transformers >= 5 configs that ask for something other than plain token embeddings."""
    task = config.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ValueError(
            f"{path}/{CONFIG_FILE}: transformer_task {task!r} is not supported; valid: ('feature-extraction',)"
        )
    output = config.get("module_output_name", "token_embeddings")
    text = (config.get("modality_config") or {}).get("text", {"method": "forward"})
    if output != "token_embeddings" or text.get("method") != "forward":
        raise ValueError(
            f"{path}/{CONFIG_FILE}: only module_output_name 'token_embeddings' from the model's forward is supported, "
            f"got module_output_name={output!r}, modality_config.text={text!r}"
        )
