"""The shared near-duplicate index in Redis (``index = "unix://…"`` / ``"redis://…"``): two builds on disjoint
halves of a corpus, reruns that neither match themselves nor add twice, the datasketch layout it relies on,
and a clear refusal when Redis cannot be reached or used."""

from __future__ import annotations

import random
import shutil
import sys

import numpy as np
import pytest

from corpusforge.dedup.redis_index import RedisBandIndex, connection_kwargs
from corpusforge.dedup.shingles import permutations, signatures
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
    assert index["url"] == url and index["basename"] == "cfmh1:5:14:8:1"

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
    assert redis_server.client().hlen(b"cfmh1:5:14:8:1_keys") == 42


def _sigs(texts):
    sig, has = signatures(texts, ngram=5, perms=permutations(112, 1))
    return sig, has


def test_batched_query_agrees_with_datasketch_and_an_interrupted_add_is_redone_once(redis_server):  # noqa: F811
    rng = random.Random(3)
    base = [_text(rng, 200) for _ in range(40)]
    sig_a, _ = _sigs(base)
    queries = [_edit(rng, base[i]) for i in range(10)] + [_text(rng, 200) for _ in range(10)]
    sig_q, has_q = _sigs(queries)
    idx = RedisBandIndex(redis_server.url, PARAMS)
    ids = [f"d{i}" for i in range(40)]
    # An attempt that died halfway: half its documents inserted, the batch never marked finished.
    with idx.lsh.insertion_session() as session:
        for i in range(20):
            session.insert(f"batch1:{ids[i]}".encode(), idx._minhash(sig_a[i]), check_duplication=False)
    assert idx.batch_docs("batch1") is None
    summary = idx.add("batch1", ids, sig_a)
    assert summary["added"] == 40 and summary["index_docs"] == 40 and idx.batch_docs("batch1") == 40
    client = redis_server.client()
    assert all(client.llen(b"cfmh1:5:14:8:1_keys" + f"batch1:{i}".encode()) == 14 for i in ids)  # no doubles
    assert idx.add("batch1", ids, sig_a)["added"] == 0  # finished: skipped
    hit = idx.matches(sig_q, has_q, exclude="batch2")
    expect = [bool(idx.lsh.query(idx._minhash(s))) for s in sig_q]  # datasketch's own query, one doc at a time
    assert hit.tolist() == expect and hit[:10].all() and not hit[10:].any()
    assert not idx.matches(sig_a, np.ones(40, bool), exclude="batch1").any()  # a batch never matches itself
    # Other parameters are another index on the same server: nothing in common.
    other = RedisBandIndex(redis_server.url, {**PARAMS, "seed": 2})
    assert other.docs() == 0 and not other.matches(sig_q, has_q, exclude="x").any()


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
    monkeypatch.setitem(sys.modules, "datasketch", None)
    with pytest.raises(ConfigError, match=r"pip install 'corpusforge\[redis\]'"):
        RedisBandIndex("redis://127.0.0.1:1/0", PARAMS)
