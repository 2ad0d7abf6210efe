"""Which weights file a session means: a path, or a model name from plugin_manifest.yaml.

A manifest entry names its file relative to the manifest and may give its sha256; a file
whose checksum differs is refused (a truncated download or a swapped file would otherwise
give silently wrong pictures).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from erdn_vs.manifest import manifest_base, manifest_path

MANIFEST_ENV = "ERDN_MANIFEST"


class ModelNotFound(ValueError):
    """The model name or weights path cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str
    name: str | None  # manifest name, if it came from the manifest
    frames: int | None  # frames the manifest declares for it


def default_manifest() -> Path:
    """$ERDN_MANIFEST, else the installed wheel's copy, else plugin_manifest.yaml at the repo root."""
    return manifest_path()


_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so reopening a session costs nothing."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def manifest_models(manifest: Path) -> dict[str, dict]:
    import yaml

    if not manifest.is_file():
        raise ModelNotFound(f"the model manifest {manifest} does not exist; pass weights=PATH instead of a model name")
    try:
        data = yaml.safe_load(manifest.read_text()) or {}
    except yaml.YAMLError as e:
        raise ModelNotFound(f"{manifest} is not valid YAML ({e})") from None
    models = data.get("models") or []
    if isinstance(models, dict):  # allow a name -> entry mapping as well as a list of entries
        models = [{"name": k, **(v or {})} for k, v in models.items()]
    if not isinstance(models, list):
        raise ModelNotFound(f"{manifest}: 'models' must be a list of entries with name, file, sha256")
    return {m["name"]: m for m in models if isinstance(m, dict) and "name" in m}


def default_weights(manifest: Path | None = None) -> ResolvedWeights:
    """The shipped default: the manifest's first model (what ``deblur()`` uses given neither model nor weights)."""
    manifest = manifest or default_manifest()
    models = manifest_models(manifest)
    if not models:
        raise ModelNotFound(f"{manifest} lists no models; pass weights=PATH")
    return resolve(next(iter(models)), None, manifest)


def resolve(model: str | None, weights: str | None, manifest: Path | None = None) -> ResolvedWeights:
    """The weights file for a session's ``model`` (manifest name) or ``weights`` (path)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"weights file {path} does not exist (the path is read by the worker process)")
        return ResolvedWeights(path, file_sha256(path), None, None)
    manifest = manifest or default_manifest()
    models = manifest_models(manifest)
    if model not in models:
        raise ModelNotFound(f"no model named {model!r} in {manifest}; known models: {sorted(models) or 'none'}")
    entry = models[model]
    file = entry.get("file")
    if not isinstance(file, str):
        raise ModelNotFound(f"{manifest}: model {model!r} has no 'file'")
    path = (manifest_base(manifest) / file).resolve()
    if not path.is_file():
        raise ModelNotFound(f"model {model!r}: weights file {path} (from {manifest}) does not exist; "
                            "download or train it, or pass weights=PATH")
    digest = file_sha256(path)
    expected = entry.get("sha256")
    if expected is not None and not isinstance(expected, str):
        raise ModelNotFound(f"{manifest}: model {model!r} has sha256 {expected!r}; write it as a quoted string")
    if expected and expected.lower() != digest:
        raise ModelNotFound(f"model {model!r}: {path} has sha256 {digest}, the manifest says {expected}; "
                            "the file is damaged or replaced: download it again")
    frames = entry.get("frames")
    return ResolvedWeights(path, digest, model, int(frames) if frames is not None else None)
