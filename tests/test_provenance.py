"""Provenance sidecars: digests, the record's fields, sidecar reuse, the rule-script hook."""

import hashlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import pytest
from snakemake.iocontainers import Namedlist

from qaclims import __version__
from qaclims.provenance import (
    PACKAGES,
    code_version,
    path_digest,
    read_provenance,
    record_provenance,
    sidecar_path,
)

ROOT = Path(__file__).resolve().parents[1]


class FakeJob:
    """What a rule script's ``snakemake`` object offers record_provenance."""

    def __init__(self, inputs: dict, outputs: dict, params: dict, rule: str = "fake_rule",
                 wildcards: dict | None = None) -> None:
        self.input = Namedlist(fromdict=inputs)
        self.output = Namedlist(fromdict=outputs)
        self.params = Namedlist(fromdict=params)
        self.wildcards = Namedlist(fromdict=wildcards or {})
        self.rule = rule
        self.threads = 2
        self.resources = Namedlist(fromdict={"mem_mb": 1000, "runtime": 60})
        self.log = Namedlist(["logs/fake.log"])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_file_and_directory_digests(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    d = path_digest(f)
    assert d == {"path": str(f), "kind": "file", "sha256": sha(b"hello"), "bytes": 5}

    folder = tmp_path / "masks"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.png").write_bytes(b"x")
    (folder / "sub" / "y.png").write_bytes(b"yy")
    (folder / ".snakemake_timestamp").write_text("")  # Snakemake's marker does not count
    expected = sha(f"sub/y.png\0{sha(b'yy')}\nx.png\0{sha(b'x')}\n".encode())
    dd = path_digest(folder)
    assert dd["kind"] == "directory" and dd["sha256"] == expected
    assert dd["bytes"] == 3 and dd["n_files"] == 2

    os.utime(folder / "x.png", (1, 1))  # timestamps do not change the hash ...
    assert path_digest(folder)["sha256"] == expected
    (folder / "x.png").rename(folder / "z.png")  # ... names do
    assert path_digest(folder)["sha256"] != expected
    assert path_digest(tmp_path / "nope")["kind"] == "missing"


def test_record_writes_one_sidecar_per_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    src = tmp_path / "in.txt"
    src.write_text("input")
    shard_a, shard_b = tmp_path / "a.h5", tmp_path / "b.h5"
    shard_a.write_bytes(b"A")
    shard_b.write_bytes(b"B")
    out_file = tmp_path / "out" / "result.json"
    out_file.parent.mkdir()
    out_file.write_text('{"x": 1}')
    out_dir = tmp_path / "out" / "masks"
    out_dir.mkdir()
    (out_dir / "m.png").write_bytes(b"png")
    job = FakeJob(inputs={"src": str(src), "cams": [str(shard_a), str(shard_b)]},
                  outputs={"result": str(out_file), "masks": str(out_dir)},
                  params={"settings": {"lr": 0.1, "steps": (1, 2)}, "split": "train"},
                  wildcards={"experiment": "qa_clims"})
    started = time.time() - 5
    written = record_provenance(job, started=started)

    assert written == [out_file.with_name("result.json.meta.json"),
                       tmp_path / "out" / "masks.meta.json"]
    assert not list(out_dir.glob("*.meta.json"))  # a folder's sidecar lies next to it
    rec = read_provenance(out_file)
    assert rec["rule"] == "fake_rule"
    assert rec["params"] == {"settings": {"lr": 0.1, "steps": [1, 2]}, "split": "train"}
    assert rec["wildcards"] == {"experiment": "qa_clims"}
    assert rec["threads"] == 2 and rec["resources"]["mem_mb"] == 1000
    inputs = {i["path"]: i for i in rec["inputs"]}
    assert inputs[str(src)]["name"] == "src" and inputs[str(src)]["sha256"] == sha(b"input")
    assert inputs[str(shard_b)]["name"] == "cams" and inputs[str(shard_b)]["sha256"] == sha(b"B")
    assert rec["artifact"]["sha256"] == sha(b'{"x": 1}') and rec["artifact"]["kind"] == "file"
    assert [o["name"] for o in rec["outputs"]] == ["result", "masks"]
    assert set(rec["packages"]) == set(PACKAGES) and rec["packages"]["numpy"]
    assert rec["slurm_job_id"] == "4242" and rec["host"]
    assert rec["device"]["device"] in ("cpu", "cuda")
    assert 4 <= rec["seconds"] < 120 and rec["started"] < rec["finished"]
    code = rec["code"]
    assert code["package_version"] == __version__
    if code["source"] == "git":  # this checkout
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", code["version"])
        assert code["version"].startswith(code["git_commit"])
    dir_rec = read_provenance(tmp_path / "out" / "masks.meta.json")
    assert dir_rec["artifact"]["kind"] == "directory" and dir_rec["artifact"]["n_files"] == 1
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # atomic


def test_missing_output_gets_no_sidecar(tmp_path: Path) -> None:
    job = FakeJob(inputs={}, outputs={"a": str(tmp_path / "never.txt")}, params={})
    assert record_provenance(job) == []
    assert not sidecar_path(tmp_path / "never.txt").exists()


def test_input_digest_reused_from_its_sidecar(tmp_path: Path) -> None:
    """A big artifact is hashed once, by the job that wrote it; a changed file is rehashed."""
    art = tmp_path / "cams.h5"
    art.write_bytes(b"cams")
    record_provenance(FakeJob(inputs={}, outputs={"cams": str(art)}, params={}))
    side = sidecar_path(art)
    rec = json.loads(side.read_text())
    rec["artifact"]["sha256"] = "recorded"  # what the writer hashed, same size and mtime
    side.write_text(json.dumps(rec))
    assert path_digest(art)["sha256"] == "recorded"
    assert path_digest(art, reuse_sidecar=False)["sha256"] == sha(b"cams")
    art.write_bytes(b"CAMS!")
    assert path_digest(art)["sha256"] == sha(b"CAMS!")


def test_code_version_outside_git_is_the_package_version(tmp_path: Path) -> None:
    v = code_version(tmp_path)
    assert v["source"] == "package" and v["version"] == f"qaclims {__version__}"
    assert v["git_commit"] is None


def test_rule_script_hook(tmp_path: Path) -> None:
    """workflow/scripts/_srcpath.record_provenance: the start is when the script began."""
    spec = importlib.util.spec_from_file_location(
        "_srcpath_test", ROOT / "workflow" / "scripts" / "_srcpath.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "o.txt"
    out.write_text("o")
    mod.record_provenance(FakeJob(inputs={}, outputs={"o": str(out)}, params={"k": 1}))
    rec = read_provenance(out)
    assert rec["params"] == {"k": 1} and rec["seconds"] >= 0


@pytest.mark.parametrize("path, expected", [("a/b.h5", "a/b.h5.meta.json"),
                                            ("a/masks/", "a/masks.meta.json")])
def test_sidecar_path(path: str, expected: str) -> None:
    assert sidecar_path(path) == Path(expected)
