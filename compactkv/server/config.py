"""Server configuration: one frozen dataclass, filled from flags > COMPACTKV_* environment > YAML profile > defaults."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..core.switches import SWITCH_VALUES, switch

DEFAULT_PORT = 11434  # Ollama's port, so existing clients need no change


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling used when a request does not say; `max_tokens=None` means up to the context length."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    max_tokens: int | None = 1024
    seed: int | None = None

    def __post_init__(self) -> None:
        from ..engine.sampling import SamplingConfig

        SamplingConfig(max_new_tokens=self.max_tokens or 1, temperature=self.temperature, top_p=self.top_p,
                       top_k=self.top_k, seed=self.seed)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `compactkv serve` needs. `alias` is the model name clients use (default: derived from the file)."""

    model: str | None = None
    gguf_file: str | None = None
    alias: str | None = None
    k: str = "turbo4"
    v: str = "turbo4"
    policy: Any = None
    device: str = "auto"
    dtype: str = "auto"
    context_length: int = 8192
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    parallel: int = 8
    max_queue: int = 64
    prefill_chunk: int = 256
    prefix_cache_mb: int = 256
    shutdown_timeout: float = 30.0
    threads: int | None = None
    graphs: bool = False
    compile: bool = False
    warmup: bool = True
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)

    def __post_init__(self) -> None:
        from ..core.kinds import check_graph_kinds, parse_kind
        from ..engine.caches import parse_policy

        parse_kind(self.k)
        parse_kind(self.v)
        object.__setattr__(self, "policy", parse_policy(self.policy))
        for name in ("graphs", "compile", "warmup"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.graphs:
            check_graph_kinds(self.k, self.v, self.policy)
        if self.compile and not self.graphs:
            raise ValueError("compile compiles the graphed decode step: it needs graphs (--graphs, COMPACTKV_GRAPHS)")
        for name in ("context_length", "parallel", "prefill_chunk"):
            if _bad_int(getattr(self, name), 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_queue", "prefix_cache_mb"):
            if _bad_int(getattr(self, name), 0):
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if _bad_int(self.port, 0) or self.port > 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {self.port!r}")
        if self.threads is not None and _bad_int(self.threads, 1):
            raise ValueError(f"threads must be a positive integer or null (torch's default), got {self.threads!r}")
        if not isinstance(self.shutdown_timeout, (int, float)) or self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be a number of seconds >= 0, got {self.shutdown_timeout!r}")


def _bad_int(value: Any, minimum: int) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or value < minimum


FIELDS = tuple(f.name for f in dataclasses.fields(ServerConfig) if f.name != "defaults")
DEFAULT_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationDefaults))
_CASTS = {"context_length": int, "port": int, "parallel": int, "max_queue": int, "prefill_chunk": int,
          "prefix_cache_mb": int, "shutdown_timeout": float, "threads": int, "graphs": switch,
          "compile": switch, "warmup": switch}


def load_profile(path: str | Path) -> dict:
    """The mapping in a YAML profile; ValueError for a missing file, bad YAML or unknown keys."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ValueError(f"cannot read profile {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"profile {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"profile {path} must be a mapping of settings")
    if isinstance(data.get("kv"), dict):  # `kv: {k, v, policy}` groups the cache settings
        data = {**{f"{key}": val for key, val in data.pop("kv").items()}, **data}
    unknown = sorted(set(data) - set(FIELDS) - {"defaults"})
    if unknown:
        raise ValueError(f"unknown profile keys {unknown}; accepted: {', '.join(FIELDS + ('kv', 'defaults'))}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(DEFAULT_FIELDS):
        raise ValueError(f"profile 'defaults' accepts: {', '.join(DEFAULT_FIELDS)}")
    return data


def build_config(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                 profile: Mapping[str, Any] | None = None) -> ServerConfig:
    """Merge flag values (None = not given) over COMPACTKV_<FIELD> variables over a profile over the defaults."""
    environ = os.environ if environ is None else environ
    profile = dict(profile or {})
    values: dict[str, Any] = {}
    for name in FIELDS:
        env_value = environ.get(f"COMPACTKV_{name.upper()}")
        if flags.get(name) is not None:
            values[name] = flags[name]
        elif env_value:
            try:
                values[name] = _CASTS.get(name, str)(env_value)
            except ValueError:
                hint = f" ({SWITCH_VALUES})" if _CASTS.get(name) is switch else ""
                raise ValueError(f"COMPACTKV_{name.upper()}={env_value!r} is not a valid {name}{hint}") from None
        elif profile.get(name) is not None:
            values[name] = profile[name]
    try:
        values["defaults"] = GenerationDefaults(**(profile.get("defaults") or {}))
    except TypeError as e:
        raise ValueError(f"profile defaults: {e}") from None
    return ServerConfig(**values)
