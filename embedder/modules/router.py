"""Router: run one of several sub-pipelines per batch, picked by task ("query", "document", ...)."""

from __future__ import annotations

import ast
import os
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

import torch

from embedder.modules.base import Features, InputModule, LoadOptions, Module, load_config, save_config

# Our inputs are always text; route_mappings keys keep sentence-transformers' (task, modality) shape.
TEXT_MODALITY = "text"
ASYM_CONFIG_NAME = "config.json"

RouteKey = tuple[str | None, str | tuple[str, ...] | None]


class Router(InputModule):
    """Holds `route -> [modules]`; `preprocess` picks the route from `task`, `forward` runs that route's modules.

    Saved in sentence-transformers' Router format (router_config.json + one subfolder per module); also loads
    the older `Asym` folders (config.json with the same `types`/`structure` layout).
    """

    config_keys = ("default_route", "allow_empty_key", "route_mappings")
    config_file_name = "router_config.json"
    # As in sentence-transformers, a Router that starts the pipeline lives in the model's root folder.
    save_in_root: ClassVar[bool] = True

    def __init__(
        self,
        sub_modules: dict[str, list[Module]],
        default_route: str | None = None,
        allow_empty_key: bool = True,
        route_mappings: dict[Any, str] | None = None,
    ) -> None:
        super().__init__()
        if not sub_modules:
            raise ValueError("Router needs at least one route in sub_modules")
        routes = list(sub_modules)
        for route, modules in sub_modules.items():
            if not modules:
                raise ValueError(f"Router route {route!r} has no modules")
        if default_route is not None and default_route not in sub_modules:
            raise ValueError(f"default_route {default_route!r} is not a route; routes: {routes}")
        self.sub_modules = torch.nn.ModuleDict({r: torch.nn.Sequential(*m) for r, m in sub_modules.items()})
        self.route_mappings = _normalise_mappings(route_mappings or {})
        for key, target in self.route_mappings.items():
            if target not in sub_modules:
                raise ValueError(f"route_mappings[{key!r}] -> {target!r} is not a route; routes: {routes}")
        if default_route is None and allow_empty_key:
            default_route = routes[0]
        self.default_route = default_route
        self.allow_empty_key = allow_empty_key

    @classmethod
    def for_query_document(
        cls,
        query_modules: list[Module],
        document_modules: list[Module],
        default_route: str | None = "document",
        allow_empty_key: bool = True,
    ) -> Router:
        """A Router with "query" and "document" routes, for encode_query / encode_document."""
        return cls(
            {"query": query_modules, "document": document_modules},
            default_route=default_route,
            allow_empty_key=allow_empty_key,
        )

    @property
    def routes(self) -> list[str]:
        """Route names in their saved order."""
        return list(self.sub_modules.keys())

    def resolve_route(self, task: str | None) -> str:
        """The route for `task`, in sentence-transformers' order: mappings, route name, then default_route."""
        m = self.route_mappings
        for key in ((task, TEXT_MODALITY), (task, None), (None, TEXT_MODALITY), (None, None)):
            if key in m:
                return m[key]
        if task is not None and task in self.sub_modules:
            return task
        if TEXT_MODALITY in self.sub_modules:
            return TEXT_MODALITY
        if task is not None:
            raise ValueError(f"Router has no route for task {task!r}; valid tasks: {self._valid_tasks()}")
        if self.default_route is None:
            raise ValueError(
                f"Router needs a task (no default_route, allow_empty_key=False); valid tasks: {self._valid_tasks()}"
            )
        return self.default_route

    def _valid_tasks(self) -> list[str]:
        mapped = [t for t, _ in self.route_mappings if t is not None]
        return list(dict.fromkeys(self.routes + mapped))

    def preprocess(self, texts: list[str], *, prompt: str | None = None, task: str | None = None) -> Features:
        """Tokenise with the chosen route's input module; the features carry `task` and `route` for forward."""
        route = self.resolve_route(task)
        features = self._input_module(route).preprocess(texts, prompt=prompt, task=task)
        features["task"] = task
        features["route"] = route
        return features

    def forward(self, features: Features) -> Features:
        # Re-resolve from the task rather than trusting features["route"]: a Router placed after the input
        # module (the old Asym layout) only sees the task the model put into the features.
        route = self.resolve_route(features.get("task"))
        for module in self.sub_modules[route]:
            features = module(features)
        return features

    def _input_module(self, route: str) -> InputModule:
        first = self.sub_modules[route][0]
        if not isinstance(first, InputModule):
            raise ValueError(
                f"Router route {route!r} starts with {type(first).__name__}, which cannot tokenise; "
                "a Router used as the first module needs an input module (Transformer, StaticEmbedding, ...) "
                "at the head of each route"
            )
        return first

    def _input_modules(self) -> list[InputModule]:
        return [seq[0] for seq in self.sub_modules.values() if isinstance(seq[0], InputModule)]

    @property
    def max_seq_length(self) -> int | None:  # type: ignore[override]
        """The routes' input modules' limit (the largest one if they differ; None if none has one)."""
        lengths = {m.max_seq_length for m in self._input_modules() if m.max_seq_length is not None}
        return max(lengths) if lengths else None

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        for module in self._input_modules():
            module.max_seq_length = value

    def text_lengths(self, texts: list[str]) -> list[int]:
        """Lengths as the default route's input module measures them (characters if it has none)."""
        route = self.default_route or self.routes[0]
        first = self.sub_modules[route][0]
        if isinstance(first, InputModule):
            return first.text_lengths(texts)
        return super().text_lengths(texts)

    def get_embedding_dimension(self) -> int | None:
        """The output size of the first route that knows it (its last module with a size), as sentence-transformers."""
        names = (
            "get_embedding_dimension",
            "get_sentence_embedding_dimension",
            "get_word_embedding_dimension",
        )
        for seq in self.sub_modules.values():
            for module in reversed(list(seq)):
                for name in names:
                    if hasattr(module, name):
                        return getattr(module, name)()
        return None

    def get_config_dict(self) -> dict[str, Any]:
        """Constructor parameters as router_config.json stores them (mapping keys as Python tuple literals)."""
        return {
            "default_route": self.default_route,
            "allow_empty_key": self.allow_empty_key,
            "route_mappings": {repr(k): v for k, v in self.route_mappings.items()},
        }

    def save(self, path: str) -> None:
        """Write router_config.json and one `<route>_<index>_<Class>` subfolder per distinct module."""
        from embedder.modules import type_name_for

        os.makedirs(path, exist_ok=True)
        ids: dict[int, str] = {}
        types: dict[str, str] = {}
        structure: dict[str, list[str]] = {}
        for route, seq in self.sub_modules.items():
            structure[route] = []
            for idx, module in enumerate(seq):
                module_id = ids.get(id(module))
                if module_id is None:  # a module shared by several routes is saved once
                    module_id = f"{route}_{idx}_{type(module).__name__}"
                    ids[id(module)] = module_id
                    types[module_id] = type_name_for(module)
                    module.save(os.path.join(path, module_id))
                structure[route].append(module_id)
        config = {"types": types, "structure": structure, "parameters": self.get_config_dict()}
        save_config(config, path, self.config_file_name)

    @classmethod
    def load(cls, path: str, options: LoadOptions | None = None) -> Router:
        """Load router_config.json (sentence-transformers' Router) or an old Asym folder's config.json."""
        from embedder.modules import module_class

        config = load_config(path, cls.config_file_name) or load_config(path, ASYM_CONFIG_NAME)
        for field in ("types", "structure"):
            if not isinstance(config.get(field), dict):
                raise ValueError(
                    f"{path}: no Router config: {cls.config_file_name} (or an Asym {ASYM_CONFIG_NAME}) "
                    f"with a {field!r} mapping"
                )
        modules: dict[str, Module] = {}
        for module_id, type_name in config["types"].items():
            _check_relative(path, module_id)
            modules[module_id] = module_class(type_name).load(os.path.join(path, module_id), options)
        sub_modules: dict[str, list[Module]] = {}
        for route, module_ids in config["structure"].items():
            unknown = [m for m in module_ids if m not in modules]
            if unknown:
                raise ValueError(f"{path}: route {route!r} lists modules {unknown} that are not in 'types'")
            sub_modules[route] = [modules[m] for m in module_ids]
        params = config.get("parameters") or {}
        mappings = {_parse_route_key(path, k): v for k, v in (params.get("route_mappings") or {}).items()}
        return cls(
            sub_modules,
            default_route=params.get("default_route"),
            allow_empty_key=params.get("allow_empty_key", True),
            route_mappings=mappings,
        )


def _normalise_mappings(mappings: dict[Any, str]) -> dict[RouteKey, str]:
    """Accept `task -> route` or `(task, modality) -> route`; store `(task, modality)` with sorted modality tuples."""
    out: dict[RouteKey, str] = {}
    for key, route in mappings.items():
        if isinstance(key, tuple) and len(key) == 2:
            task, modality = key
        elif key is None or isinstance(key, str):
            task, modality = key, None
        else:
            raise ValueError(f"route_mappings key {key!r} must be a task name or a (task, modality) pair")
        if isinstance(modality, (tuple, list)):
            modality = tuple(sorted(modality))
        out[(task, modality)] = route
    return out


def _parse_route_key(path: str, text: str) -> RouteKey:
    """Read back a mapping key saved as a Python tuple literal, e.g. "('query', None)"."""
    try:
        key = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(
            f"{path}: route_mappings key {text!r} is not a (task, modality) tuple literal"
        ) from e
    if not (isinstance(key, tuple) and len(key) == 2):
        raise ValueError(f"{path}: route_mappings key {text!r} is not a (task, modality) pair")
    return key


def _check_relative(path: str, module_id: str) -> None:
    """Refuse module folders that would escape the Router's folder."""
    for flavour in (PurePosixPath(module_id), PureWindowsPath(module_id)):
        if flavour.is_absolute() or flavour.anchor or ".." in flavour.parts or not module_id:
            raise ValueError(f"{path}: Router module id {module_id!r} must be a plain relative folder name")
