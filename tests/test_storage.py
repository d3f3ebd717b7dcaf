"""Storage convention: atomic replacement, manifests, and verification that names the file at fault."""

from __future__ import annotations

import pytest

from wmtp_core import storage
from wmtp_core.storage import (
    MANIFEST,
    StorageError,
    atomic_dir,
    publish,
    read_manifest,
    sha256_file,
    verify,
    write_manifest,
)


def _write(files: dict[str, bytes]):
    def write(tmp):
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        return {"files_written": len(files)}

    return write


def test_publish_writes_manifest_with_hashes_counts_and_params(tmp_path):
    out = tmp_path / "group" / "asset"
    manifest = publish(
        out, _write({"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"}), params={"seed": 3}, counts={"rows": 2}
    )
    assert manifest == read_manifest(out) == verify(out)
    assert manifest["files"]["a.txt"] == {"sha256": sha256_file(out / "a.txt"), "bytes": 5}
    assert set(manifest["files"]) == {"a.txt", "sub/b.bin"}
    assert manifest["counts"] == {"rows": 2, "files_written": 2}
    assert manifest["params"] == {"seed": 3}
    assert [p.name for p in out.parent.iterdir()] == ["asset"]  # no temporary siblings left behind


def test_a_crash_mid_write_leaves_the_previous_version(tmp_path):
    out = tmp_path / "asset"
    publish(out, _write({"v.txt": b"version 1"}))

    def crash(tmp):
        (tmp / "v.txt").write_bytes(b"half of version 2")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        publish(out, crash)
    assert (out / "v.txt").read_bytes() == b"version 1"
    verify(out)
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]


def test_replacing_swaps_the_whole_directory(tmp_path):
    out = tmp_path / "asset"
    publish(out, _write({"old.txt": b"1"}))
    publish(out, _write({"new.txt": b"2"}))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "new.txt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "extra"])
def test_verify_names_the_damaged_file(tmp_path, damage):
    out = tmp_path / "asset"
    publish(out, _write({"data.parquet": b"0123456789", "keep.txt": b"k"}))
    target = out / "data.parquet"
    if damage == "truncate":
        target.write_bytes(b"01234")
        expected = "5 bytes, manifest expects 10"
    elif damage == "flip":
        target.write_bytes(b"0123456780")
        expected = "does not match manifest"
    elif damage == "delete":
        target.unlink()
        expected = "missing"
    else:
        (out / "stray.bin").write_bytes(b"x")
        target, expected = out, "files not in the manifest: stray.bin"
    with pytest.raises(StorageError) as err:
        verify(out)
    assert str(target) in str(err.value) and expected in str(err.value)


def test_missing_or_broken_manifest_is_named(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        verify(tmp_path / "never")
    with atomic_dir(tmp_path / "asset") as tmp:
        (tmp / "x").write_text("x")
    with pytest.raises(StorageError, match=f"{MANIFEST}: manifest missing"):
        verify(tmp_path / "asset")
    (tmp_path / "asset" / MANIFEST).write_text("{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        verify(tmp_path / "asset")


def test_publish_adds_params_and_counts_to_a_manifest_the_writer_wrote_without_rehashing(tmp_path, monkeypatch):
    # A model directory written by wmtp_core.model.save inside publish: the writer hashes its own files.
    def write(tmp):
        _write({"model.safetensors": b"weights", "params.json": b"{}"})(tmp)
        write_manifest(tmp, counts={"tensors": 2})
        return {"parameters": 5}

    hashed = []
    monkeypatch.setattr(storage, "sha256_file", lambda p: hashed.append(p.name) or sha256_file(p))
    out = tmp_path / "models" / "base_model"
    manifest = publish(out, write, params={"seed": 1}, counts={"layers": 3})
    assert sorted(hashed) == ["model.safetensors", "params.json"]  # once each, by the writer
    assert [p.relative_to(out).as_posix() for p in out.rglob(MANIFEST)] == [MANIFEST]
    assert manifest == read_manifest(out) == verify(out)
    assert set(manifest["files"]) == {"model.safetensors", "params.json"}
    assert manifest["params"] == {"seed": 1}
    assert manifest["counts"] == {"tensors": 2, "layers": 3, "parameters": 5}


@pytest.mark.parametrize("late", ["added", "resized"])
def test_publish_names_a_file_changed_after_the_writers_manifest(tmp_path, late):
    def write(tmp):
        (tmp / "a.bin").write_bytes(b"a")
        write_manifest(tmp)
        if late == "added":
            (tmp / "late.bin").write_bytes(b"late")
        else:
            (tmp / "a.bin").write_bytes(b"aa")

    name, expected = ("late.bin", "written after") if late == "added" else ("a.bin", "2 bytes")
    with pytest.raises(StorageError, match=rf"{name}: {expected}"):
        publish(tmp_path / "asset", write)
    assert not (tmp_path / "asset").exists()


def test_a_nested_manifest_is_a_file_the_outer_manifest_covers(tmp_path):
    def write(tmp):
        (tmp / "model").mkdir()
        (tmp / "model" / "w.bin").write_bytes(b"w")
        write_manifest(tmp / "model")

    out = tmp_path / "asset"
    manifest = publish(out, write)
    assert set(manifest["files"]) == {"model/w.bin", f"model/{MANIFEST}"}
    verify(out / "model")
    (out / "model" / MANIFEST).write_text((out / "model" / MANIFEST).read_text().replace('"w', '"W'))
    with pytest.raises(StorageError, match=f"model/{MANIFEST}: SHA256"):
        verify(out)


def test_verify_some_files_checks_only_those(tmp_path):
    out = tmp_path / "asset"
    publish(out, _write({"small.bin": b"s", "large.bin": b"0123"}))
    (out / "large.bin").write_bytes(b"3210")
    assert verify(out, ["small.bin"])["files"]["small.bin"]["bytes"] == 1
    with pytest.raises(StorageError, match="large.bin: SHA256"):
        verify(out, ["large.bin"])
    with pytest.raises(StorageError, match=f"other.bin: not listed in .*{MANIFEST}"):
        verify(out, ["other.bin"])
