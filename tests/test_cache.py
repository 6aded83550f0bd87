"""ftdsl.runtime.cache: integrity (F4), concurrency (F5, F5d, F5e, F5c), full disk (F9),
input hashing (F12), unwritable cache (F13)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ftdsl.errors import ResourceError
from ftdsl.runtime import cache as cache_mod
from ftdsl.runtime import cache_entry, hashing
from ftdsl.runtime.cache import Cache, canonical_json, hash_key, sha256_file

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}


# ----------------------------------------------------------------------------- helpers


def k(n: int | str) -> str:
    return hash_key({"test": n})


def build_simple(d: Path) -> None:
    (d / "weights.safetensors").write_bytes(b"\x00" * 100 + b"payload")
    (d / "sub").mkdir()
    (d / "sub" / "spec.json").write_text('{"a": 1}')


class Warnings(list):
    def __call__(self, *, code: str, message: str) -> None:
        self.append((code, message))


@pytest.fixture()
def c(tmp_path: Path) -> Cache:
    cache = Cache(tmp_path / "cache", lock_timeout=20)
    cache.on_warning = Warnings()
    return cache


def temps(c: Cache) -> list[str]:
    if not c.entries_dir.exists():
        return []
    return sorted(n for n in os.listdir(c.entries_dir) if n.startswith("."))


def make_writable(p: Path) -> None:
    for dirpath, _, files in os.walk(p):
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def spawn(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        **kw,
    )


# ----------------------------------------------------------------------------- keys


def test_canonical_json_and_keys() -> None:
    assert canonical_json({"b": 1, "a": [3e-05, 2.0, "é"]}) == '{"a":[3e-05,2.0,"é"],"b":1}'
    assert hash_key({"a": 1, "b": 2}) == hash_key({"b": 2, "a": 1})
    assert hash_key({"lr": 3e-5}) != hash_key({"lr": 5e-5})
    assert canonical_json({"p": Path("a/b"), "s": {2, 1}, "t": (1, 2)}) == '{"p":"a/b","s":[1,2],"t":[1,2]}'
    with pytest.raises(ValueError):
        canonical_json({"lr": float("nan")})
    assert Cache("/nonexistent").key_of({"a": 1}) == hash_key({"a": 1})


def test_invalid_key_is_refused(c: Cache) -> None:
    for bad in ("../../etc", "ABC", "", "x" * 64):
        with pytest.raises(ValueError):
            c.entry_dir(bad)


def test_constructor_touches_nothing(tmp_path: Path) -> None:
    c = Cache(tmp_path / "never")
    assert c.lookup(k(1)) is None and not c.has(k(1))
    assert c.last_run("p.ftp", "s") is None and c.ls() == []
    assert not (tmp_path / "never").exists()


# ----------------------------------------------------------------------------- publish / lookup


def test_round_trip(c: Cache) -> None:
    key = k("rt")
    p = c.publish(key, build_simple, {"kind": "model", "label": "m"})
    assert p == c.entry_dir(key) == c.root / "entries" / key[:2] / key
    assert c.has(key) and c.lookup(key) == p and c.lookup(key, verify=True) == p
    m = json.loads((p / "manifest.json").read_text())
    assert m["format"] == 1 and m["key"] == key and m["meta"] == {"kind": "model", "label": "m"}
    assert set(m["files"]) == {"weights.safetensors", "sub/spec.json"}
    assert m["files"]["sub/spec.json"] == {"size": 8, "sha256": sha256_file(p / "sub" / "spec.json")}
    assert m["created"].endswith("Z") and m["ftdsl_version"]
    assert (p / "weights.safetensors").stat().st_mode & 0o777 == 0o444
    assert temps(c) == [] and not list(c.locks_dir.glob("tmp-*"))
    [row] = c.ls()
    assert row["key"] == key and row["size"] == 107 + 8 and row["meta"]["kind"] == "model"
    assert c.on_warning == []


def test_second_publish_keeps_first(c: Cache) -> None:
    key = k("twice")
    p1 = c.publish(key, build_simple, {"n": 1})
    p2 = c.publish(key, lambda d: (d / "other").write_text("x"), {"n": 2})
    assert p1 == p2
    assert json.loads((p1 / "manifest.json").read_text())["meta"] == {"n": 1}
    assert temps(c) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_build_leaves_nothing(c: Cache, exc: BaseException) -> None:
    def build(d: Path) -> None:
        (d / "half.bin").write_bytes(b"x" * 1000)
        raise exc

    with pytest.raises(type(exc)):
        c.publish(k("fail"), build, {})
    assert temps(c) == [] and not c.has(k("fail")) and not os.path.lexists(c.entry_dir(k("fail")))
    assert not list(c.locks_dir.glob("tmp-*"))


def test_build_with_symlink_or_reserved_name_refused(c: Cache, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        c.publish(k("sym"), lambda d: (d / "l").symlink_to(tmp_path), {})
    with pytest.raises(ValueError):
        c.publish(k("man"), lambda d: (d / "manifest.json").write_text("{}"), {})
    assert temps(c) == []


def _flip(p: Path) -> None:
    f = p / "weights.safetensors"
    os.chmod(f, 0o644)
    data = bytearray(f.read_bytes())
    data[3] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    f = p / "weights.safetensors"
    os.chmod(f, 0o644)
    with open(f, "r+b") as fh:
        fh.truncate(10)


def _no_manifest(p: Path) -> None:
    (p / "manifest.json").unlink()


def _rewrite_manifest(p: Path, fn) -> None:
    mp = p / "manifest.json"
    m = json.loads(mp.read_text())
    fn(m)
    os.chmod(mp, 0o644)
    mp.write_text(json.dumps(m))


def _dotdot(p: Path) -> None:
    def fn(m):
        m["files"]["../../escape.bin"] = {"size": 1, "sha256": "0" * 64}

    _rewrite_manifest(p, fn)


def _absolute(p: Path) -> None:
    _rewrite_manifest(p, lambda m: m["files"].__setitem__("/etc/passwd", {"size": 1, "sha256": "0" * 64}))


def _evil_pkl(p: Path) -> None:
    (p / "evil.pkl").write_bytes(b"\x80\x04cposix\nsystem\n")


def _symlink(p: Path) -> None:
    (p / "link").symlink_to("/etc")


def _bad_json(p: Path) -> None:
    os.chmod(p / "manifest.json", 0o644)
    (p / "manifest.json").write_text("{not json")


def _wrong_key(p: Path) -> None:
    _rewrite_manifest(p, lambda m: m.__setitem__("key", k("other")))


CORRUPTIONS = {
    "flipped byte": (_flip, "sha256"),
    "truncated": (_truncate, "bytes"),
    "missing manifest": (_no_manifest, "manifest.json is missing"),
    "dotdot in manifest": (_dotdot, "outside the entry"),
    "absolute in manifest": (_absolute, "outside the entry"),
    "planted pickle": (_evil_pkl, "evil.pkl"),
    "symlink": (_symlink, "symlink"),
    "bad json": (_bad_json, "not valid JSON"),
    "wrong key": (_wrong_key, "another key"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_quarantined_and_recomputed(c: Cache, case: str) -> None:
    corrupt, why = CORRUPTIONS[case]
    key = k("corrupt")
    p = c.publish(key, build_simple, {})
    corrupt(p)
    assert c.lookup(key, label="train.finetune") is None
    [(code, msg)] = c.on_warning
    assert code == "FTP503"
    assert msg.startswith("cache entry for `train.finetune` is corrupt: ") and msg.endswith("; recomputing")
    assert why in msg
    assert not os.path.lexists(p)
    quarantined = [q for q in os.listdir(c.quarantine_dir) if not q.endswith(".txt")]
    assert len(quarantined) == 1 and quarantined[0].startswith(key + "-")
    # Recompute works and yields an intact entry.
    path, computed = c.get_or_compute(key, build_simple, {}, label="train.finetune")
    assert computed and c.lookup(key, verify=True) == path
    assert len(c.on_warning) == 1


def test_large_entries_check_sizes_unless_verify(c: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_entry, "SMALL_ENTRY_BYTES", 10)  # everything counts as large
    key = k("large")
    p = c.publish(key, build_simple, {})
    _flip(p)  # same size: only a content hash catches it
    assert c.lookup(key) == p
    assert c.lookup(key, verify=True) is None
    assert c.on_warning and c.on_warning[0][0] == "FTP503"


def test_verify_all(c: Cache) -> None:
    good, bad = k("good"), k("bad")
    c.publish(good, build_simple, {})
    _flip(c.publish(bad, build_simple, {}))
    results = dict(c.verify_all())
    assert results[good] is None and "sha256" in results[bad]
    assert not c.has(bad) and c.has(good)
    assert [r["key"] for r in c.ls()] == [good]


# ----------------------------------------------------------------------------- work dirs, temps, gc


def test_work_dir_lifecycle(c: Cache) -> None:
    key = k("work")
    w = c.work_dir(key)
    (w / "ckpt.json").write_text("{}")
    assert c.work_dir(key) == w and (w / "ckpt.json").exists()  # kept

    def compute(d: Path) -> None:
        assert (c.work_dir(key) / "ckpt.json").exists()  # still there while computing
        (d / "x").write_text("1")

    _, computed = c.get_or_compute(key, compute, {})
    assert computed and not w.exists()  # removed once published
    c.clear_work(key)  # idempotent


def test_clean_stale_temps_spares_live_builder(c: Cache) -> None:
    c.check_writable()
    dead = c.entries_dir / ".tmp-deadbeef"
    dead.mkdir()
    (dead / "f.bin").write_bytes(b"x")
    os.chmod(dead / "f.bin", 0o444)
    trash = c.entries_dir / ".trash-0123"
    trash.mkdir()

    started, release = threading.Event(), threading.Event()

    def slow(d: Path) -> None:
        (d / "a").write_text("1")
        started.set()
        release.wait(10)

    t = threading.Thread(target=c.publish, args=(k("live"), slow, {}))
    t.start()
    try:
        assert started.wait(10)
        assert c.clean_stale_temps(3600) == []  # too young
        removed = c.clean_stale_temps(0)
        assert sorted(p.name for p in removed) == [".tmp-deadbeef", ".trash-0123"]
        assert len(temps(c)) == 1  # the live one
    finally:
        release.set()
        t.join(10)
    assert temps(c) == [] and c.lookup(k("live")) is not None


def test_gc(c: Cache) -> None:
    with pytest.raises(ValueError):
        c.gc()
    a, b, d = k("a"), k("b"), k("d")
    for key in (a, b, d):
        c.publish(key, build_simple, {})
    c.work_dir(k("orphan"))
    assert c.gc(older_than_s=3600) == []  # all young
    assert sorted(c.gc(keep={a}, dry_run=True)) == sorted([b, d, k("orphan")])
    assert c.has(b)  # dry run
    with c.lock(b):  # a run holds b: gc skips it (F5c), never waits
        t0 = time.monotonic()
        removed = c.gc(keep={a})
        assert time.monotonic() - t0 < 5
    assert sorted(removed) == sorted([d, k("orphan")])
    assert c.has(a) and c.has(b) and not c.has(d)
    assert not (c.work_root / k("orphan")).exists()
    assert c.gc(keep={a}) == [b]
    assert temps(c) == []
    assert c.remove(a) is True and c.remove(a) is False
    assert c.ls() == []


# ----------------------------------------------------------------------------- index


def test_index(c: Cache, tmp_path: Path) -> None:
    pipe = tmp_path / "p.ftp"
    pipe.write_text("")
    attrs = {"optimizer": {"$call": "adamw", "lr": 3e-05}}
    c.record_run(pipe, "train.ft", k(1), attrs, {"model": k(2)})
    rec = c.last_run(str(pipe), "train.ft")
    assert rec["key"] == k(1) and rec["attrs"] == attrs and rec["inputs"] == {"model": k(2)}
    assert c.last_run(pipe, "other") is None and c.last_run(tmp_path / "q.ftp", "train.ft") is None
    # Same file through another spelling of its path.
    assert c.last_run(tmp_path / "." / "p.ftp", "train.ft")["key"] == k(1)
    c.record_run(pipe, "train.ft", k(3), {"optimizer": {"lr": 5e-05}}, {})
    assert c.last_run(pipe, "train.ft")["key"] == k(3)


def test_index_concurrent_updates(c: Cache, tmp_path: Path) -> None:
    pipe = tmp_path / "p.ftp"
    threads = [
        threading.Thread(target=c.record_run, args=(pipe, f"s{i}", k(i), {"i": i}, {}))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for i in range(8):
        assert c.last_run(pipe, f"s{i}")["attrs"] == {"i": i}


def test_corrupt_index_reads_as_empty(c: Cache, tmp_path: Path) -> None:
    pipe = tmp_path / "p.ftp"
    c.record_run(pipe, "s", k(1), {}, {})
    [f] = list(c.index_dir.iterdir())
    f.write_text("garbage")
    assert c.last_run(pipe, "s") is None
    c.record_run(pipe, "s", k(2), {}, {})
    assert c.last_run(pipe, "s")["key"] == k(2)


# ----------------------------------------------------------------------------- file hashing (F12)


def test_hash_file_memo_touch_and_rewrite(c: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c.check_writable()
    f = tmp_path / "data.csv"
    f.write_bytes(b"a,b\n1,2\n")
    h1 = c.hash_file(f)
    assert h1 == sha256_file(f)
    assert c.memo_path.exists()

    reads = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: reads.append(p) or real(p))
    assert c.hash_file(f) == h1 and reads == []  # memo hit
    assert Cache(c.root).hash_file(f) == h1 and reads == []  # memo persisted

    # touch: stat changes, so it is re-read, but the content hash (the key) does not change.
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns + 5 * 10**9, st.st_mtime_ns + 5 * 10**9))
    assert c.hash_file(f) == h1 and len(reads) == 1

    # Same size, same mtime, new content.
    st = f.stat()
    f.write_bytes(b"a,b\n9,9\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    h_new = sha256_file(f)
    assert h_new != h1
    assert c.hash_file(f, memo=False) == h_new  # --verify always re-reads
    # Even a memo that lies (stat identical, e.g. coarse timestamps) is bypassed by verify.
    c._memo[os.path.realpath(f)]["sha256"] = "0" * 64
    assert c.hash_file(f) == "0" * 64  # proves the memo is consulted...
    assert c.hash_file(f, memo=False) == h_new  # ...and that verify does not trust it


def test_hash_file_without_cache_dir(tmp_path: Path) -> None:
    c = Cache(tmp_path / "none")
    f = tmp_path / "x"
    f.write_text("x")
    assert c.hash_file(f) == sha256_file(f)
    assert not (tmp_path / "none").exists()  # plan never creates the cache


def test_hash_tree(c: Cache, tmp_path: Path) -> None:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text("{}")
    (d / "sub" / "b.bin").write_bytes(b"b")
    h1 = c.hash_tree(d)
    os.utime(d / "a.json")
    assert c.hash_tree(d) == h1
    (d / "sub" / "b.bin").rename(d / "sub" / "c.bin")
    h2 = c.hash_tree(d)
    assert h2 != h1
    # Symlinks are followed (HF snapshot -> blobs), loops are not.
    blob = tmp_path / "blob"
    blob.write_bytes(b"b")
    (d / "sub" / "c.bin").unlink()
    (d / "sub" / "c.bin").symlink_to(blob)
    (d / "loop").symlink_to(d)
    assert c.hash_tree(d, memo=False) != h1


# ----------------------------------------------------------------------------- unwritable cache (F13)


def test_unwritable_root_real(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    os.chmod(root, 0o555)
    try:
        try:
            (root / "probe").mkdir()
        except PermissionError:
            pass
        else:
            pytest.skip("running as root: chmod 0555 does not stop writes")
        c = Cache(root)
        with pytest.raises(ResourceError) as ei:
            c.publish(k(1), build_simple, {})
        assert ei.value.code == "FTP508" and str(root) in ei.value.message and ei.value.hint
    finally:
        os.chmod(root, 0o755)


def test_unwritable_root_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores permission bits, so also simulate what access(2) says for a 0555 dir.
    root = tmp_path / "ro"
    real_access = os.access
    monkeypatch.setattr(
        cache_mod.os, "access", lambda p, m: False if Path(p) == root else real_access(p, m)
    )
    c = Cache(root)
    for op in (lambda: c.publish(k(1), build_simple, {}), lambda: c.work_dir(k(1)), c.check_writable):
        with pytest.raises(ResourceError) as ei:
            op()
        assert ei.value.code == "FTP508" and str(root) in ei.value.message
        assert "chmod" in ei.value.hint


def test_root_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ResourceError) as ei:
        Cache(tmp_path / "file" / "cache").check_writable()
    assert ei.value.code == "FTP508"


# ----------------------------------------------------------------------------- full disk (F9)


def test_wrapped_disk_full_from_writer(c: Cache) -> None:
    def build(d: Path) -> None:
        (d / "w.bin").write_bytes(b"x")
        raise RuntimeError("safetensors: I/O error: File too large (os error 27)")

    with pytest.raises(ResourceError) as ei:
        c.publish(k("wrapped"), build, {})
    assert ei.value.code == "FTP505" and temps(c) == []


_FSIZE_CHILD = r"""
import sys
from ftdsl.errors import ResourceError
from ftdsl.runtime.cache import Cache
c = Cache(sys.argv[1])
def build(d):
    with open(d / "weights.bin", "wb") as f:
        for _ in range(16):
            f.write(b"w" * 65536)
try:
    c.publish(sys.argv[2], build, {})
except ResourceError as e:
    print(e.code, e.message)
else:
    print("no error")
"""


def _limit_fsize(limit: int):
    def pre() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def test_rlimit_fsize_during_publish(c: Cache) -> None:
    before = c.publish(k("before"), build_simple, {})
    p = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(c.root), k("big")],
        capture_output=True,
        text=True,
        env=ENV,
        preexec_fn=_limit_fsize(256 * 1024),
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("FTP505 disk full while writing "), p.stdout
    assert "free" in p.stdout
    assert not c.has(k("big")) and not os.path.lexists(c.entry_dir(k("big")))
    assert temps(c) == []
    assert c.lookup(k("before"), verify=True) == before  # previous state intact


# ----------------------------------------------------------------------------- concurrency (F5, F5d, F5e)

_RACE_CHILD = r"""
import json, os, sys, time
from ftdsl.runtime.cache import Cache
root, key, counter = sys.argv[1:4]
c = Cache(root, lock_timeout=30)
def compute(d):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    (d / "out.txt").write_text("result")
p, computed = c.get_or_compute(key, compute, {"pid": os.getpid()}, label="data.x")
print(json.dumps({"path": str(p), "computed": computed, "content": (p / "out.txt").read_text()}))
"""


def test_three_processes_one_computes(c: Cache, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    key = k("race")
    procs = [spawn(_RACE_CHILD, c.root, key, counter) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out) for out, _ in outs]
    assert sum(r["computed"] for r in results) == 1
    assert {r["path"] for r in results} == {str(c.entry_dir(key))}
    assert all(r["content"] == "result" for r in results)
    assert len(counter.read_text().splitlines()) == 1
    assert temps(c) == []


_HOLDER_CHILD = r"""
import sys, time
from ftdsl.runtime.cache import Cache
c = Cache(sys.argv[1])
def compute(d):
    (d / "partial.bin").write_bytes(b"x" * 1000)
    print("computing", flush=True)
    time.sleep(60)
if sys.argv[3] == "lock":
    with c.lock(sys.argv[2]):
        print("computing", flush=True)
        time.sleep(60)
else:
    c.get_or_compute(sys.argv[2], compute, {})
"""


def test_lock_timeout_names_holder(c: Cache) -> None:
    key = k("held")
    holder = spawn(_HOLDER_CHILD, c.root, key, "lock")
    try:
        assert holder.stdout.readline().strip() == "computing"
        waiter = Cache(c.root, lock_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(ResourceError) as ei:
            waiter.get_or_compute(key, build_simple, {})
        assert 0.4 < time.monotonic() - t0 < 10
        e = ei.value
        assert e.code == "FTP504"
        assert e.message.startswith(f"cache entry {key[:12]} is locked by pid {holder.pid} on host ")
        assert socket.gethostname() in e.message and "since" in e.message and "command" in e.message
        assert "--lock-timeout" in e.hint
    finally:
        holder.kill()
        holder.wait(10)


def test_holder_sigkilled_waiter_takes_over(c: Cache) -> None:
    key = k("killed")
    holder = spawn(_HOLDER_CHILD, c.root, key, "compute")
    try:
        assert holder.stdout.readline().strip() == "computing"
        assert len(temps(c)) == 1  # the holder's half-built temp
        result: dict = {}

        def wait_and_compute() -> None:
            result["value"] = Cache(c.root, lock_timeout=30).get_or_compute(key, build_simple, {})

        t = threading.Thread(target=wait_and_compute)
        t.start()
        time.sleep(0.3)
        assert t.is_alive()  # waiting on the lock
        os.kill(holder.pid, signal.SIGKILL)  # no finally runs in the holder
        holder.wait(10)
        t.join(15)
        assert not t.is_alive()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
    path, computed = result["value"]
    assert computed and c.lookup(key, verify=True) == path
    assert temps(c) == []  # the dead holder's temp was cleaned
    assert not list(c.locks_dir.glob("tmp-*"))
