"""Which models a replica serves: names, specs, the default; and looking them up by name."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError, NotFound
from service.models.base import BATCHING, Model, batching_value
from service.models.loader import FILE_SUFFIXES, load_model
from service.settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EXECUTIONS = ("thread", "process")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    spec: str
    execution: str
    #: The models file's `inline` option (None: as the model declares).
    inline: bool | None = None
    #: The models file's batching knobs (max_batch_size, max_batch_delay_ms, concurrency);
    #: a knob not given is as the model declares.
    batching: tuple[tuple[str, Any], ...] = ()


def _check(config: ModelConfig) -> ModelConfig:
    if not _NAME.match(config.name):
        raise ModelLoadError(f"model name {config.name!r}: use letters, digits, '_', '.', '-'")
    if config.execution not in EXECUTIONS:
        raise ModelLoadError(f"model {config.name!r}: execution must be one of {EXECUTIONS}")
    return config


def _from_file(path: Path, execution: str) -> tuple[dict[str, ModelConfig], str | None]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"models file {path}: {exc}") from exc
    configs: dict[str, ModelConfig] = {}
    for name, entry in data.get("models", {}).items():
        if isinstance(entry, str):
            entry = {"spec": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("spec"), str):
            raise ModelLoadError(f"models file {path}: model {name!r} needs a 'spec' string")
        spec = entry["spec"]
        if spec.lower().endswith(FILE_SUFFIXES) and not Path(spec).is_absolute():
            spec = str(path.parent / spec)  # model files are found next to the models file
        inline = entry.get("inline")
        if inline is not None and not isinstance(inline, bool):
            raise ModelLoadError(f"models file {path}: model {name!r}: inline must be true/false")
        try:
            batching = tuple((k, batching_value(k, entry[k])) for k in BATCHING if k in entry)
        except ModelLoadError as exc:
            raise ModelLoadError(f"models file {path}: model {name!r}: {exc}") from None
        configs[name] = ModelConfig(name, spec, entry.get("execution", execution), inline, batching)
    default = data.get("default_model")
    return configs, default if isinstance(default, str) else None


def model_configs(settings: Settings) -> tuple[list[ModelConfig], str]:
    """Every configured model and the default's name.

    Models come from the models file, then MODELS ('name=spec,...'; a later entry with the
    same name wins). MODEL is served as 'default' when set explicitly or when nothing else
    is configured. The default is DEFAULT_MODEL if set, else the file's default_model,
    else 'default', else the first model.
    """
    configs: dict[str, ModelConfig] = {}
    file_default = None
    if settings.models_file is not None:
        configs, file_default = _from_file(settings.models_file, settings.execution)
    for pair in filter(None, (p.strip() for p in settings.models.split(","))):
        name, sep, spec = pair.partition("=")
        if not sep or not spec.strip():
            raise ModelLoadError(f"MODELS entry {pair!r} is not of the form name=spec")
        configs[name.strip()] = ModelConfig(name.strip(), spec.strip(), settings.execution)
    explicit = settings.model_fields_set
    if settings.model and ("model" in explicit or not configs):
        configs = {"default": ModelConfig("default", settings.model, settings.execution), **configs}
    if not configs:
        raise ModelLoadError("no model configured: set MODEL, MODELS or MODELS_FILE")
    if "default_model" in explicit:
        default = settings.default_model
    else:
        default = file_default or ("default" if "default" in configs else next(iter(configs)))
    if default not in configs:
        raise ModelLoadError(f"default model {default!r} is not among {sorted(configs)}")
    return [_check(c) for c in configs.values()], default


class ModelRegistry:
    """The loaded models of this replica, by name."""

    def __init__(self, models: dict[str, Model], default: str) -> None:
        self.models = models
        self.default = default
        #: The names of the models that stream (a running job of theirs can be stopped).
        self.streaming = [name for name, model in models.items() if model.streams]
        #: The models with file inputs (their jobs' files are fetched before a call).
        self.with_files = {name for name, model in models.items() if model.file_fields}

    @classmethod
    def load(cls, configs: list[ModelConfig], default: str) -> ModelRegistry:
        models = {
            c.name: load_model(
                c.name,
                c.spec,
                c.execution,
                setup=c.execution == "thread",
                inline=c.inline,
                batching=dict(c.batching),
            )
            for c in configs
        }
        return cls(models, default)

    def get(self, name: str | None = None) -> Model:
        model = self.models.get(self.default if name is None else name)
        if model is None:
            raise NotFound(f"Unknown model {name!r}.")
        return model

    def describe(self) -> dict[str, Any]:
        return {"models": sorted(self.models), "default": self.default}

    def teardown(self) -> None:
        for model in self.models.values():
            if model.execution == "thread":
                model.teardown()
