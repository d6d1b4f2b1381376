"""CLIPModel: a CLIP-style dual encoder (transformers CLIPModel + its processor) embedding texts and images."""

from __future__ import annotations

import inspect
import os
from typing import Any, ClassVar

import torch
from transformers import AutoConfig, AutoModel, AutoProcessor

from embedder.modules.base import Features, InputModule, LoadOptions, load_config, save_config
from embedder.modules.transformer import CONFIG_FILE, _uses_safetensors, _with_dtype

TEXT, IMAGE = "text", "image"
# What sentence-transformers 6 writes into sentence_bert_config.json for a CLIP folder (and what its legacy
# CLIPModel module assumes when a folder has none): one model method per modality, read at `pooler_output`.
DEFAULT_MODALITY_CONFIG: dict[str, dict[str, Any]] = {
    TEXT: {"method": "get_text_features", "method_output_name": "pooler_output"},
    IMAGE: {"method": "get_image_features", "method_output_name": "pooler_output"},
}
# The model methods a config may name, per modality: a config never gets to call anything else.
METHODS = {TEXT: ("get_text_features",), IMAGE: ("get_image_features",)}
OUTPUT_NAME = "sentence_embedding"


def is_multimodal_config(config: dict[str, Any]) -> bool:
    """Whether a sentence_bert_config.json describes a CLIP-style module (an image modality or feature methods)."""
    modalities = config.get("modality_config") or {}
    text = modalities.get(TEXT) or {}
    return IMAGE in modalities or text.get("method") in METHODS[TEXT]


class CLIPModel(InputModule):
    """Texts through `get_text_features`, images through `get_image_features`: one vector each, in one space.

    Loads what sentence-transformers >= 5 saves for CLIP (a Transformer module whose sentence_bert_config.json
    has a modality_config) and the older `CLIPModel` module folders. Its output is the sentence embedding itself.
    """

    config_keys: ClassVar[tuple[str, ...]] = ("modality_config",)
    config_file_name: ClassVar[str] = CONFIG_FILE
    save_in_root: ClassVar[bool] = True

    def __init__(
        self,
        model_name_or_path: str,
        *,
        modality_config: dict[str, dict[str, Any]] | None = None,
        max_seq_length: int | None = None,
        model_args: dict[str, Any] | None = None,
        processor_args: dict[str, Any] | None = None,
        config_args: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__()
        path = model_name_or_path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: CLIPModel needs a local model folder (resolve hub ids first)")
        self.modality_config = _check_modality_config(path, modality_config or DEFAULT_MODALITY_CONFIG)
        model_args = _with_dtype(dict(model_args or {}))
        model_args.pop("packed", None)  # ours, for BERT-family Transformers: CLIP has no packed forward
        processor_args = dict(processor_args or {})
        if max_seq_length is not None:
            processor_args.setdefault("model_max_length", max_seq_length)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **(config_args or {}))
        self.auto_model = AutoModel.from_pretrained(
            path,
            config=config,
            trust_remote_code=trust_remote_code,
            use_safetensors=_uses_safetensors(path, allow_pickle),
            **model_args,
        )
        self.processor = AutoProcessor.from_pretrained(
            path, trust_remote_code=trust_remote_code, **processor_args
        )
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        self.image_processor = getattr(self.processor, "image_processor", None)
        if self.tokenizer is None or self.image_processor is None:
            raise ValueError(
                f"{path}: CLIPModel needs a processor with a tokenizer and an image processor, "
                f"got {type(self.processor).__name__}"
            )
        # As sentence-transformers: the tokenizer's limit, capped by the config's position limit when it has one.
        max_pos = getattr(config, "max_position_embeddings", None)
        if "model_max_length" not in processor_args and isinstance(max_pos, int) and max_pos > 0:
            self.tokenizer.model_max_length = min(self.tokenizer.model_max_length, max_pos)
        self._params: dict[str, tuple[str, ...]] = {}

    @property
    def max_seq_length(self) -> int | None:  # type: ignore[override]
        """Texts are truncated to this many tokens (the tokenizer's model_max_length)."""
        return self.tokenizer.model_max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"max_seq_length must be a positive int or None, got {value!r}")
        if value is not None:
            self.tokenizer.model_max_length = value

    def preprocess(self, texts: list[str], *, prompt: str | None = None, task: str | None = None) -> Features:
        """Tokenise `prompt + text` for each text, truncated to max_seq_length and padded to the batch's longest."""
        if prompt:
            texts = [prompt + t for t in texts]
        features: Features = dict(
            self.tokenizer(list(texts), padding=True, truncation="longest_first", return_tensors="pt")
        )
        features["modality"] = TEXT
        if task is not None:
            features["task"] = task
        return features

    def preprocess_images(self, images: list[Any]) -> Features:
        """Pixel values for PIL images (or arrays), resized and normalised by the model's image processor."""
        features: Features = dict(self.image_processor(images, return_tensors="pt"))
        features["modality"] = IMAGE
        return features

    def forward(self, features: Features) -> Features:
        """Run the modality's method (get_text_features / get_image_features); its output is the sentence embedding."""
        modality = features.get("modality", TEXT)
        if modality not in self.modality_config:
            raise ValueError(f"CLIPModel has no {modality!r} modality; valid: {sorted(self.modality_config)}")
        entry = self.modality_config[modality]
        method = getattr(self.auto_model, entry["method"])
        names = self._params.get(modality)
        if names is None:
            names = tuple(inspect.signature(method).parameters)
            self._params[modality] = names
        output = method(**{k: features[k] for k in names if k in features})
        key = entry.get("method_output_name")
        features[OUTPUT_NAME] = output if key is None or isinstance(output, torch.Tensor) else output[key]
        return features

    def get_embedding_dimension(self) -> int:
        """Width of the shared space (the projection size)."""
        config = self.auto_model.config
        dim = getattr(config, "projection_dim", None)
        return int(dim if dim is not None else config.get_text_config().hidden_size)

    get_sentence_embedding_dimension = get_embedding_dimension

    def get_config_dict(self) -> dict[str, Any]:
        """What sentence_bert_config.json holds, as sentence-transformers 6 writes it for CLIP."""
        return {
            "transformer_task": "feature-extraction",
            "modality_config": self.modality_config,
            "module_output_name": OUTPUT_NAME,
        }

    def save(self, path: str) -> None:
        """Write the model (safetensors), the processor files and sentence_bert_config.json into `path`."""
        os.makedirs(path, exist_ok=True)
        self.auto_model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)
        save_config(self.get_config_dict(), path, CONFIG_FILE)

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> CLIPModel:
        """Build from a folder with the HF model, its processor and (optionally) sentence_bert_config.json."""
        options = options or LoadOptions()
        config = load_config(path, CONFIG_FILE)
        output = config.get("module_output_name", OUTPUT_NAME)
        if output != OUTPUT_NAME:
            raise ValueError(
                f"{path}/{CONFIG_FILE}: a CLIP-style module must output {OUTPUT_NAME!r}, got {output!r}"
            )
        args = {}
        for new, old in (
            ("model_kwargs", "model_args"),
            ("processor_kwargs", "tokenizer_args"),
            ("config_kwargs", "config_args"),
        ):
            merged = {**(config.get(old) or {}), **(config.get(new) or {})}
            merged.pop("trust_remote_code", None)  # only the caller can switch on remote code
            args[old] = merged
        return cls(
            path,
            modality_config=config.get("modality_config"),
            max_seq_length=config.get("max_seq_length"),
            model_args={**args["model_args"], **options.model_kwargs},
            processor_args={**args["tokenizer_args"], **options.tokenizer_kwargs},
            config_args={**args["config_args"], **options.config_kwargs},
            trust_remote_code=options.trust_remote_code,
            allow_pickle=options.allow_pickle,
        )

    def __repr__(self) -> str:
        return f"CLIPModel(modalities={sorted(self.modality_config)}, architecture={type(self.auto_model).__name__})"


def _check_modality_config(path: str, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The modality config itself when every entry names a known modality and its method; else a ValueError."""
    for modality, entry in config.items():
        if modality not in METHODS:
            raise ValueError(
                f"{path}/{CONFIG_FILE}: modality {modality!r} is not supported; valid: {tuple(METHODS)}"
            )
        method = (entry or {}).get("method")
        if method not in METHODS[modality]:
            raise ValueError(
                f"{path}/{CONFIG_FILE}: modality_config.{modality}.method {method!r} is not supported; "
                f"valid: {METHODS[modality]}"
            )
    if TEXT not in config:
        raise ValueError(
            f"{path}/{CONFIG_FILE}: modality_config needs a {TEXT!r} entry, got {sorted(config)}"
        )
    return {m: dict(e) for m, e in config.items()}
