"""plugin_manifest.yaml: reading it once, checking its shape, and validating call arguments against it.

The manifest declares every parameter of the public function (type, default, allowed values,
doc); ``erdn_vs.deblur`` checks its arguments with ``check_arguments`` so the manifest a host
reads and the checks the function makes cannot drift apart. Pure Python + PyYAML.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_ENV = "ERDN_MANIFEST"
PARAM_TYPES = ("clip", "int", "float", "bool", "str", "int[2]")
_REQUIRED = object()  # default of a parameter the manifest gives no default for


class ManifestError(ValueError):
    """plugin_manifest.yaml is missing or malformed; the message names the file and the entry."""


# An installed wheel carries the repository's manifest inside this package (setup.py copies it at build time);
# a checkout, editable install included, reads the one at the repository root.
_PACKAGED = Path(__file__).resolve().parent / "plugin_manifest.yaml"
_CHECKOUT = Path(__file__).resolve().parent.parent / "plugin_manifest.yaml"


def manifest_path() -> Path:
    """$ERDN_MANIFEST, else the installed wheel's copy, else plugin_manifest.yaml at the repository root."""
    env = os.environ.get(MANIFEST_ENV)
    if env:
        return Path(env)
    return _PACKAGED if _PACKAGED.is_file() else _CHECKOUT


def manifest_base(path: Path) -> Path:
    """The directory a manifest's relative ``file:`` entries start from: the manifest's own, except for a wheel's
    packaged copy, whose entries (``worker/weights/...``) start where the packages are installed."""
    path = Path(path).resolve()
    return path.parent.parent if path == _PACKAGED else path.parent


@dataclass(frozen=True)
class Param:
    """One parameter of a public function, as the manifest declares it."""

    name: str
    type: str
    doc: str
    default: Any = _REQUIRED
    nullable: bool = False
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any) -> Any:
        """``value`` normalised (int[2] -> tuple); raises ValueError "NAME ... " saying what is allowed."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"{self.name} must not be None; {self.allowed()}")
        if self.type == "clip":
            return value  # the filter checks the clip itself (format, size, ...)
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be True or False, got {value!r}")
            return value
        if self.type == "int[2]":
            pair = (value, value) if _is_int(value) else value
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(v) for v in pair)):
                raise ValueError(f"{self.name} must be an int or a pair of ints (width, height), got {value!r}")
            for v in pair:
                self._check_range(v, value)
            return (int(pair[0]), int(pair[1]))
        if self.type == "int":
            if not _is_int(value):
                raise ValueError(f"{self.name} must be an int; {self.allowed()}; got {value!r}")
            value = int(value)
        elif self.type == "float":
            if not (_is_int(value) or isinstance(value, float)) or value != value:
                raise ValueError(f"{self.name} must be a number; {self.allowed()}; got {value!r}")
            value = float(value)
        elif self.type == "str":
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a string; {self.allowed()}; got {value!r}")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise ValueError(f"{self.name} {value!r} is not valid; {self.allowed()}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        self._check_range(value, value)
        return value

    def _check_range(self, v: float, shown: Any) -> None:
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            raise ValueError(f"{self.name} is {shown!r}; {self.allowed()}")

    def allowed(self) -> str:
        """A short phrase saying what values are allowed."""
        if self.choices is not None:
            text = f"use one of {list(self.choices)}"
        elif self.pattern is not None:
            text = f"use a value matching {self.pattern!r}"
        elif self.min is not None or self.max is not None:
            text = f"use a value in [{self.min}, {self.max}]"
        else:
            text = f"use a {self.type}"
        return text + (" or None" if self.nullable else "")


@dataclass(frozen=True)
class ModelEntry:
    """A shipped model; ``file`` is relative to the manifest (``manifest_base``)."""

    name: str
    file: str
    sha256: str
    preset: str
    frames: int
    training_data: str
    quality: dict
    licence: str
    path: Path


@dataclass(frozen=True)
class Manifest:
    path: Path
    plugin: dict[str, Any]
    functions: dict[str, tuple[Param, ...]]
    worker: dict[str, Any]
    models: tuple[ModelEntry, ...]

    def params(self, function: str) -> dict[str, Param]:
        return {p.name: p for p in self.functions[function]}

    def model(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(repr(m.name) for m in self.models) or "none yet"
        raise ValueError(f"model {name!r} is not in {self.path} (known models: {known}); "
                         "pass one of those, or weights='path/to/weights.safetensors'")

    def check_arguments(self, function: str, values: dict[str, Any]) -> dict[str, Any]:
        """Every argument checked against the manifest, in declaration order; returns normalised values."""
        params = self.params(function)
        unknown = set(values) - set(params)
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)}; the parameters are {list(params)}")
        return {name: p.check(values[name]) for name, p in params.items() if name in values}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _param(entry: Any, where: str) -> Param:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ManifestError(f"{where}: each parameter must be a mapping with a 'name'")
    where = f"{where}.{entry['name']}"
    allowed = {"name", "type", "doc", "default", "nullable", "choices", "min", "max", "pattern"}
    if set(entry) - allowed:
        raise ManifestError(f"{where}: unknown keys {sorted(set(entry) - allowed)}")
    if entry.get("type") not in PARAM_TYPES:
        raise ManifestError(f"{where}: type must be one of {PARAM_TYPES}, got {entry.get('type')!r}")
    if not isinstance(entry.get("doc"), str) or not entry["doc"].strip():
        raise ManifestError(f"{where}: a one-line 'doc' is required")
    choices = entry.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise ManifestError(f"{where}: choices must be a list")
    param = Param(
        name=entry["name"], type=entry["type"], doc=" ".join(entry["doc"].split()),
        default=entry.get("default", _REQUIRED), nullable=bool(entry.get("nullable", False)),
        choices=tuple(choices) if choices is not None else None,
        min=entry.get("min"), max=entry.get("max"), pattern=entry.get("pattern"),
    )
    if not param.required and param.type != "clip":
        try:  # a default the manifest's own rules reject is a manifest bug
            param.check(param.default)
        except ValueError as e:
            raise ManifestError(f"{where}: the default does not pass its own checks ({e})") from None
    return param


def _model(entry: Any, where: str, root: Path) -> ModelEntry:
    fields = ("name", "file", "sha256", "preset", "frames", "training_data", "quality", "licence")
    if not isinstance(entry, dict) or set(fields) - set(entry):
        missing = sorted(set(fields) - set(entry)) if isinstance(entry, dict) else list(fields)
        raise ManifestError(f"{where}: a model entry needs {list(fields)}; missing {missing}")
    if entry["frames"] not in (3, 5):
        raise ManifestError(f"{where}: frames must be 3 or 5")
    if not re.fullmatch(r"[0-9a-f]{64}", str(entry["sha256"])):
        raise ManifestError(f"{where}: sha256 must be 64 lowercase hex digits")
    return ModelEntry(
        name=str(entry["name"]), file=str(entry["file"]), sha256=str(entry["sha256"]), preset=str(entry["preset"]),
        frames=int(entry["frames"]), training_data=str(entry["training_data"]), quality=dict(entry["quality"] or {}),
        licence=str(entry["licence"]), path=(root / str(entry["file"])).resolve(),
    )


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Check the structure of loaded YAML; every problem is a ManifestError naming the entry."""
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the top level must be a mapping")
    for key in ("plugin", "functions", "worker", "models"):
        if key not in data:
            raise ManifestError(f"{path}: missing top-level '{key}'")
    plugin = data["plugin"]
    if not isinstance(plugin, dict) or any(not plugin.get(k) for k in ("id", "name", "version")):
        raise ManifestError(f"{path}: plugin needs id, name and version")
    functions: dict[str, tuple[Param, ...]] = {}
    if not isinstance(data["functions"], dict):
        raise ManifestError(f"{path}: functions must be a mapping name -> {{params: [...]}}")
    for fname, fdef in data["functions"].items():
        where = f"{path}: functions.{fname}.params"
        if not isinstance(fdef, dict) or not isinstance(fdef.get("params"), list):
            raise ManifestError(f"{where} must be a list")
        params = tuple(_param(p, where) for p in fdef["params"])
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ManifestError(f"{where}: duplicate parameter names")
        functions[fname] = params
    worker = data["worker"]
    if not isinstance(worker, dict) or not worker.get("command"):
        raise ManifestError(f"{path}: worker needs a command")
    models_raw = data["models"] or []
    if not isinstance(models_raw, list):
        raise ManifestError(f"{path}: models must be a list (possibly empty)")
    models = tuple(_model(m, f"{path}: models[{i}]", manifest_base(path)) for i, m in enumerate(models_raw))
    if len({m.name for m in models}) != len(models):
        raise ManifestError(f"{path}: duplicate model names")
    return Manifest(path, dict(plugin), functions, dict(worker), models)


@functools.cache
def _load(path: Path) -> Manifest:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ManifestError(f"cannot read the plugin manifest {path} ({e}); reinstall erdn-vs or set "
                            f"${MANIFEST_ENV} to its path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"{path} is not valid YAML ({e})") from None
    return parse_manifest(data, path)


def load_manifest(path: str | Path | None = None) -> Manifest:
    """The manifest (loaded once per path and cached)."""
    return _load(Path(path).resolve() if path is not None else manifest_path().resolve())


def weights_file_frames(path: Path) -> int | None:
    """The ``frames`` a safetensors weights file records in its header, read without torch.

    None when the header cannot be read that way: the worker then reports what is wrong.
    """
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 1 << 24:
                return None
            header = json.loads(f.read(size))
        return int(header["__metadata__"]["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class ModelChoice:
    """The model a call asked for: a shipped model's name or an absolute weights path (exactly one),
    and its own window (``frames``; None for a weights file whose header does not record it)."""

    model: str | None
    weights: str | None
    frames: int | None

    @property
    def label(self) -> str:
        return f"model {self.model!r}" if self.model is not None else str(self.weights)


def choose_model(model: str | None, weights: str | None) -> ModelChoice:
    """``model`` (a name in the manifest; None: the first, the default) or ``weights`` (a file path).

    Raises ValueError saying what to pass: both given, a missing weights file, an unknown name, or
    a manifest without models. Each caller words a window mismatch in its own terms."""
    if model is not None and weights is not None:
        raise ValueError("give model (a shipped model's name) or weights (a file path), not both")
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"weights file {path} does not exist; pass the path of an erdn-vs .safetensors file")
        # absolute: the worker has its own working directory. A header without frames: the worker says what is wrong.
        return ModelChoice(None, str(path), weights_file_frames(path))
    manifest = load_manifest()
    if model is None:
        if not manifest.models:
            raise ValueError(f"no model given and {manifest.path} lists no shipped models yet; "
                             "pass weights='path/to/weights.safetensors' (train one with the training package)")
        model = manifest.models[0].name
    entry = manifest.model(model)
    return ModelChoice(entry.name, None, entry.frames)
