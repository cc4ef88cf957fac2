"""The shared near-duplicate index in Redis (``index = "unix://…"`` / ``"redis://…"``): two builds on disjoint
halves of a corpus, reruns that neither match themselves nor add twice, an interrupted insert redone once, bucket
splits that lose nothing, the same answers as the folder index and datasketch's ``MinHashLSH``, and a clear
refusal when Redis cannot be reached or used."""

from __future__ import annotations

import random
import shutil
import sys

import numpy as np
import pytest

from corpusforge.dedup import redis_index
from corpusforge.dedup.index import matches
from corpusforge.dedup.redis_index import RedisBandIndex, connection_kwargs
from corpusforge.dedup.shingles import band_hashes, permutations, signatures
from corpusforge.document import Document
from corpusforge.errors import DONE, FAILED, ConfigError
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths
from tests.helpers import write_doc_shards as _shards
from tests.redis_server import redis_server  # noqa: F401  (the fixture)

VOCAB = [f"w{i}" for i in range(3000)]
PARAMS = {"ngram": 5, "bands": 14, "rows": 8, "seed": 1}


def _text(rng: random.Random, n: int = 300) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _edit(rng: random.Random, text: str, k: int = 2) -> str:
    ws = text.split()
    for j in rng.sample(range(len(ws)), k):
        ws[j] = rng.choice(VOCAB)
    return " ".join(ws)


def _recipe(tmp_path, name, input_dir, index):
    return validate_recipe(
        {
            "name": name,
            "workdir": str(tmp_path / name),
            "stages": [
                {"kind": "shards", "name": "input", "path": str(input_dir)},
                {"kind": "minhash_dedup", "name": "near", "index": index},
            ],
        }
    )


def _kept(tmp_path, name):
    return sorted(d.id for d in iter_documents(manifest_paths(tmp_path / name / "near")))


def _near(res):
    return next(o for o in res.stages if o.name == "near")


def _clusters(res):
    return next(o for o in res.stages if o.name == "near.clusters")


def test_two_builds_share_one_redis_index_and_reruns_neither_match_nor_add_twice(tmp_path, redis_server):  # noqa: F811
    rng = random.Random(11)
    half_a = [Document(id=f"a{i:02d}", text=_text(rng)) for i in range(30)]
    planted = [Document(id=f"b{i:02d}", text=_edit(rng, half_a[3 * i].text)) for i in range(8)]  # 2 words changed
    half_b = planted + [Document(id=f"c{i:02d}", text=_text(rng)) for i in range(12)]
    _shards(tmp_path / "in_a", half_a, per_file=10)
    _shards(tmp_path / "in_b", half_b, per_file=10)
    url = redis_server.url

    res = run_recipe(_recipe(tmp_path, "machine1", tmp_path / "in_a", url))
    assert res.status == DONE and _kept(tmp_path, "machine1") == [d.id for d in half_a]
    index = _near(res).manifest["index"]
    assert index["added"] == 30 and index["index_docs"] == 30 and not index["already_indexed"]
    assert index["url"] == url and index["basename"] == "cfmh2:5:14:8:1"

    # Another machine, another run folder, the other half: exactly the planted near copies go.
    res = run_recipe(_recipe(tmp_path, "machine2", tmp_path / "in_b", url))
    assert res.status == DONE
    assert _kept(tmp_path, "machine2") == [f"c{i:02d}" for i in range(12)]
    assert _near(res).steps[0]["dropped"] == {"near_duplicate_indexed": 8}
    extra = _clusters(res).extra
    assert extra["indexed_docs_checked_against"] == 30 and extra["indexed_matches"] == 8
    assert _near(res).manifest["index"]["added"] == 12 and _near(res).manifest["index"]["index_docs"] == 42

    # The first half again, in a fresh folder, then in its own with the stage removed (--force reruns nothing
    # when the config is unchanged): its own documents are no match, none is added again.
    for rerun in ("machine1b", "machine1"):
        shutil.rmtree(tmp_path / rerun / "near", ignore_errors=True)
        res = run_recipe(_recipe(tmp_path, rerun, tmp_path / "in_a", url))
        assert res.status == DONE and _kept(tmp_path, rerun) == [d.id for d in half_a]
        assert _clusters(res).extra == {**_clusters(res).extra, "indexed_matches": 0}
        assert _clusters(res).extra["indexed_docs_checked_against"] == 12  # the other batch only
        index = _near(res).manifest["index"]
        assert index["already_indexed"] and index["added"] == 0 and index["index_docs"] == 42
    state = redis_server.client().hgetall(b"cfmh2:5:14:8:1:buckets")
    assert all(state[f"n{b}".encode()] == b"42" for b in range(14))  # every band hash once


def _bands(texts):
    sig, has = signatures(texts, ngram=5, perms=permutations(112, 1))
    return sig, band_hashes(sig, 14, 8), has


def test_an_interrupted_add_is_redone_once_and_a_batch_never_matches_itself(redis_server, monkeypatch):  # noqa: F811
    rng = random.Random(3)
    base = [_text(rng, 200) for _ in range(40)]
    _, bands_a, has_a = _bands(base)
    queries = [_edit(rng, base[i]) for i in range(10)] + [_text(rng, 200) for _ in range(10)]
    _, bands_q, has_q = _bands(queries)
    idx = RedisBandIndex(redis_server.url, PARAMS)
    assert not idx.matches(bands_a, has_a, exclude="batch1").any()  # an empty index
    # An attempt that dies after its first script call: part of its band hashes in, the batch not finished.
    monkeypatch.setattr(redis_index, "CHUNK", 16)
    script, calls = idx._add, []

    def dies_after_one(**kw):
        if calls:
            raise ConnectionError("killed")
        calls.append(script(**kw))

    monkeypatch.setattr(idx, "_add", dies_after_one)
    with pytest.raises(ConnectionError):
        idx.add("batch1", bands_a, np.zeros(40, bool))
    assert idx.batch_docs("batch1") is None and idx.docs() == 0 and calls == [16 * 14]
    assert not idx.matches(bands_a, has_a, exclude="batch1").any()  # its own hashes are in: its record replays
    monkeypatch.setattr(idx, "_add", script)
    summary = idx.add("batch1", bands_a, np.zeros(40, bool))
    assert summary["added"] == 40 and summary["index_docs"] == 40 and idx.batch_docs("batch1") == 40
    client = redis_server.client()
    state = client.hgetall(b"cfmh2:5:14:8:1:buckets")
    assert all(state[f"n{b}".encode()] == b"40" for b in range(14))  # every band hash once, none twice
    assert idx.add("batch1", bands_a, np.zeros(40, bool))["added"] == 0  # finished: skipped
    hit = idx.matches(bands_q, has_q, exclude="batch2")
    assert hit.tolist() == (matches(bands_a, bands_q) & has_q).tolist()  # the folder index's answer
    assert hit[:10].all() and not hit[10:].any()
    assert not idx.matches(bands_a, np.ones(40, bool), exclude="batch1").any()  # a batch never matches itself
    assert {client.object("encoding", k) for k in client.scan_iter(b"cfmh2:5:14:8:1:[0-9]*")} == {b"intset"}
    # Other parameters are another index on the same server: nothing in common.
    other = RedisBandIndex(redis_server.url, {**PARAMS, "seed": 2})
    assert other.docs() == 0 and not other.matches(bands_q, has_q, exclude="x").any()


def test_bucket_splits_keep_every_band_hash_findable(redis_server, monkeypatch):  # noqa: F811
    monkeypatch.setattr(redis_index, "LOAD", 3)  # thousands of splits for 3,000 documents
    rng = np.random.default_rng(7)
    bands = rng.integers(0, 2**64, size=(3000, 14), dtype=np.uint64)
    idx = RedisBandIndex(redis_server.url, PARAMS)
    for k in range(3):  # three batches, so splits also happen between script calls
        idx.add(f"b{k}", bands[k * 1000 : (k + 1) * 1000], np.zeros(1000, bool))
    client = redis_server.client()
    state = {k.decode(): int(v) for k, v in client.hgetall(b"cfmh2:5:14:8:1:buckets").items()}
    for b in range(14):
        level, split = state[f"L{b}"], state[f"p{b}"]
        assert 2**level + split == 1000  # 3,000 members, 3 a bucket
        members = 0
        for key in client.scan_iter(f"cfmh2:5:14:8:1:{b}:*".encode()):
            for v in map(int, client.smembers(key)):  # each in its linear-hashing bucket
                a = v % 2**level
                assert int(key.rsplit(b":", 1)[1]) == (a if a >= split else v % 2 ** (level + 1))
                members += 1
        assert members == state[f"n{b}"] == 3000
    probe = rng.integers(0, 2**64, size=(3000, 14), dtype=np.uint64)
    probe[::3, 5] = bands[::3, 5]  # every third shares band 5 with an indexed document
    hit = idx.matches(probe, np.ones(3000, bool), exclude="q")
    assert hit.tolist() == [i % 3 == 0 for i in range(3000)]
    assert idx.matches(bands, np.ones(3000, bool), exclude="q").all()


def test_matches_equal_datasketch_minhashlsh_query(redis_server):  # noqa: F811
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(9)
    base = [_text(rng, 200) for _ in range(60)]
    sig_a, bands_a, has_a = _bands(base)
    queries = [_edit(rng, base[i], k=rng.choice([2, 20, 60])) for i in range(30)] + [_text(rng, 200) for _ in range(20)]
    sig_q, bands_q, has_q = _bands(queries)
    idx = RedisBandIndex(redis_server.url, PARAMS)
    idx.add("base", bands_a, np.zeros(60, bool))
    lsh = datasketch.MinHashLSH(num_perm=112, params=(14, 8))
    for i, s in enumerate(sig_a):
        lsh.insert(f"d{i}", datasketch.LeanMinHash(seed=1, hashvalues=s, scheme="affine32"))
    expect = [bool(lsh.query(datasketch.LeanMinHash(seed=1, hashvalues=s, scheme="affine32"))) for s in sig_q]
    hit = idx.matches(bands_q, has_q, exclude="q")
    assert hit.tolist() == expect and 0 < sum(expect) < 50


def test_unreachable_redis_is_a_config_error_and_nothing_is_written(tmp_path, redis_server):  # noqa: F811
    rng = random.Random(5)
    _shards(tmp_path / "in", [Document(id=f"a{i}", text=_text(rng)) for i in range(5)])
    url = f"unix://{tmp_path}/no-such/redis.sock"
    with pytest.raises(ConfigError) as err:
        _recipe(tmp_path, "down", tmp_path / "in", url)
    assert url in str(err.value) and "is redis-server running?" in str(err.value)
    assert err.value.path == "stages[1].index"
    assert not (tmp_path / "down").exists()

    # Reachable when the recipe is checked, gone when the build reaches the index: the build fails with the
    # same message and the apply stage writes nothing.
    recipe = _recipe(tmp_path, "later", tmp_path / "in", redis_server.url)
    redis_server.stop()
    res = run_recipe(recipe)
    assert res.status == FAILED
    errors = " ".join(_clusters(res).errors)
    assert redis_server.url in errors and "is redis-server running?" in errors
    assert (
        not list((tmp_path / "later" / "near").glob("*.arrow")) and not (tmp_path / "later/near/manifest.json").exists()
    )


def test_a_server_that_may_evict_keys_is_refused(tmp_path, redis_server):  # noqa: F811
    rng = random.Random(6)
    _shards(tmp_path / "in", [Document(id=f"a{i}", text=_text(rng)) for i in range(5)])
    redis_server.client().config_set("maxmemory-policy", "allkeys-random")
    with pytest.raises(ConfigError) as err:
        _recipe(tmp_path, "evicting", tmp_path / "in", redis_server.url)
    assert "maxmemory-policy allkeys-random" in str(err.value) and err.value.path == "stages[1].index"
    assert not (tmp_path / "evicting").exists()


def test_urls_become_redis_keyword_arguments_and_missing_packages_say_what_to_install(monkeypatch):
    assert connection_kwargs("redis://:s3cret@cache.example:6380/2") == {
        "password": "s3cret",
        "host": "cache.example",
        "port": 6380,
        "db": 2,
    }
    kw = connection_kwargs("unix:///run/redis/redis.sock?db=3")
    assert kw["unix_socket_path"] == "/run/redis/redis.sock" and kw["db"] == 3 and "path" not in kw
    assert connection_kwargs("rediss://u:p@h/1")["ssl"] is True
    with pytest.raises(ConfigError, match="is redis-server running") as err:
        RedisBandIndex("redis://:s3cret@127.0.0.1:1/0", PARAMS)
    assert "s3cret" not in str(err.value) and err.value.path == "index"
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"pip install 'corpusforge\[redis\]'"):
        RedisBandIndex("redis://127.0.0.1:1/0", PARAMS)
