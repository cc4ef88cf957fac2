"""The run's data card (RELIABILITY 54): its counts are the manifests' and stats', its front matter parses, its
``size_categories`` is right at every bucket bound, no secret of the recipe reaches it, and it is written on
every run (a failed one too) without changing a byte on a rerun."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

import corpusforge.card
from corpusforge.card import CardStage, size_category, write_card
from corpusforge.demo.server import serve
from corpusforge.demo.site import Page
from corpusforge.errors import DONE, FAILED, ConfigError
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.stats import merge_dropped
from corpusforge.storage import iter_batches, manifest_paths
from corpusforge.tokens.card import dataset_card

SECRET = "Hunter2-s3cr3t"
VOCAB = (
    "river stone cloud market garden letter window engine forest silver harbor paper winter orange bridge "
    "candle mirror village thunder basket meadow ladder pocket castle violin desert lantern rocket velvet"
).split()


@pytest.fixture(scope="module", autouse=True)
def _plots_on():
    """The suite's runs skip the card's plots (tests/conftest.py); the card's own tests draw and check them."""
    old = os.environ.get("CORPUSFORGE_CARD_PLOTS")
    os.environ["CORPUSFORGE_CARD_PLOTS"] = "1"
    yield
    if old is None:
        os.environ.pop("CORPUSFORGE_CARD_PLOTS", None)
    else:
        os.environ["CORPUSFORGE_CARD_PLOTS"] = old


def _text(rng: random.Random, words: int) -> str:
    sentences = []
    while words > 0:
        n = min(words, rng.randint(6, 14))
        sentences.append(" ".join(rng.choice(VOCAB) for _ in range(n)).capitalize() + ".")
        words -= n
    return " ".join(sentences)


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _stats(folder: Path) -> list[dict]:
    return _json(folder / "stats" / "stats.json")["steps"]


def _card_files(workdir: Path) -> list[Path]:
    return [workdir / "README.md", workdir / "card.json", *sorted((workdir / "card").glob("*"))]


def _check_counts(workdir: Path, card: dict) -> None:
    """Every count on the card equals what the stages' manifests and stats say (RELIABILITY 54)."""
    for st in card["stages"]:
        folder = workdir / st["name"]
        manifest = _json(folder / "manifest.json")
        steps = _stats(folder)
        assert st["status"] in ("done", "skipped")
        assert st["rows"] == manifest["rows"] and st["files"] == len(manifest["files"])
        assert st["documents_in"] == steps[0]["input"] and st["documents_out"] == steps[-1]["output"]
        assert st["dropped"] == dict(merge_dropped(steps))
        if st["kind"] not in ("tokenizer", "tokens"):
            assert st["documents_out"] == manifest["rows"]  # documents out are the rows the folder holds
    data = card["dataset"]
    rows = _json(workdir / data["stage"] / "manifest.json")["rows"]
    assert data["documents"] == rows == sum(data["sources"].values()) == sum(data["domains"].values())
    # Domains and sources recounted here straight from the shards, independently of the card's reader.
    urls, sources = Counter(), Counter()
    for path in manifest_paths(workdir / data["stage"]):
        for b in iter_batches(path):
            urls.update((urlsplit(u).hostname if u else "(no url)") for u in b.column("url").to_pylist())
            sources.update(b.column("source").to_pylist())
    assert data["domains"] == dict(urls) and data["sources"] == dict(sources)
    assert sum(h["documents"] for h in data["chars"]["histogram"]) == rows
    if card["input"]:
        first = _json(workdir / card["input"]["stage"] / "manifest.json")["rows"]
        assert sum(card["input"]["domains"].values()) == first
    for d in card["dedup"]:
        steps = _stats(workdir / d["stage"])
        removed = sum(merge_dropped(steps).values())
        assert (d["documents_in"], d["removed"]) == (steps[0]["input"], removed)
        assert d["rate"] == pytest.approx(removed / steps[0]["input"])
    tokens = _json(workdir / "tokens" / "manifest.json")
    assert card["tokens"]["tokens"] == tokens["tokens"] and card["tokens"]["documents"] == tokens["documents"]
    assert sum(card["tokens"]["per_domain"].values()) == card["tokens"]["total"] == sum(tokens["tokens"].values())
    report = _json(workdir / "tokenizer" / "report.json")
    assert card["tokenizer"]["overall"] == report["overall"] and card["tokenizer"]["vocab_size"] == report["vocab_size"]
    # The README shows the same numbers: front matter and the stage table, formatted from the manifests.
    readme = (workdir / "README.md").read_text()
    fm = _front_matter(readme)
    assert fm["size_categories"] == [size_category(sum(tokens["documents"].values()))]
    assert fm["corpusforge"]["documents"] == rows
    assert fm["corpusforge"]["tokens_total"] == sum(tokens["tokens"].values())
    assert all(fm["corpusforge"][f"tokens_{s}"] == n for s, n in tokens["tokens"].items())
    for st in card["stages"]:
        steps = _stats(workdir / st["name"])
        assert (
            f"| {st['name']} | {st['kind']} | {st['status']} | {steps[0]['input']:,} | {steps[-1]['output']:,} |"
            in (readme)
        )
    for plot in card["plots"].values():
        assert f"]({plot})" in readme
        assert (workdir / plot).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -------------------------------------------------------------------------------- a build from local files
def _local_recipe(tmp: Path) -> dict:
    rng = random.Random(7)
    hosts = ["news.example.org", "blog.example.com", "wiki.example.net"]
    rows = []
    for i in range(40):
        rows.append(
            {
                "id": f"d{i}",
                "text": _text(rng, 40 + (i * 37) % 300),
                "url": f"https://{hosts[i % 3]}/p/{i}" if i != 5 else None,
                "language": "fr" if i % 10 == 0 else "en",
            }
        )
    rows += [dict(rows[4], id="copy-a"), dict(rows[8], id="copy-b")]  # exact duplicates
    rows.append({"id": "short", "text": "far too short", "url": "https://news.example.org/s"})
    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return {
        "name": "cardtest",
        "workdir": str(tmp / "w"),
        "workers": 1,
        "license": "cc-by-4.0",
        # Secrets the recipe holds: a Redis password in a URL and S3 credentials in an endpoint URL.
        "description": f"shared frontier at redis://:{SECRET}@127.0.0.1:6390/0",
        "stages": [
            {
                "kind": "read_jsonl",
                "name": "input",
                "path": str(src),
                "endpoint_url": f"http://AKIAEXAMPLE:{SECRET}@127.0.0.1:9000/",
            },
            {
                "kind": "process",
                "name": "clean",
                "tasks": 1,
                "steps": [{"type": "normalize"}, {"type": "length", "min_words": 20}],
            },
            {"kind": "exact_dedup", "name": "dedup"},
            {"kind": "minhash_dedup", "name": "near_dedup"},
            {"kind": "tokenizer", "name": "tokenizer", "input": "near_dedup", "vocab_size": 300},
            {"kind": "tokens", "name": "tokens", "input": "near_dedup", "val_fraction": 0.1},
        ],
    }


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    raw = _local_recipe(tmp)
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE, res.message
    return tmp / "w", raw


def test_card_counts_equal_the_manifests_of_a_local_build(local_run):
    w, _ = local_run
    card = _json(w / "card.json")
    assert [s["name"] for s in card["stages"]] == ["input", "clean", "dedup", "near_dedup", "tokenizer", "tokens"]
    _check_counts(w, card)
    by_name = {s["name"]: s for s in card["stages"]}
    assert by_name["input"]["dropped"] == {"bad_json": 1}
    assert by_name["clean"]["dropped"] == {"length_too_few_words": 1}
    assert card["dedup"][0] == {"stage": "dedup", "kind": "exact_dedup", "documents_in": 42, "removed": 2} | {
        "rate": pytest.approx(2 / 42)
    }
    assert card["dataset"]["domains"]["(no url)"] == 1  # document d5 has no URL
    assert card["optouts"] == {"checked": False, "stages": [], "total": 0, "by_reason": {}}
    assert card["dataset"]["consent"] is None  # local files carry no consent record
    assert set(card["plots"]) == {"dropped", "lengths", "tokens_per_domain"}


def test_front_matter_is_a_hub_dataset_card(local_run):
    w, _ = local_run
    readme = (w / "README.md").read_text()
    fm = _front_matter(readme)
    assert fm["pretty_name"] == "cardtest" and fm["license"] == "cc-by-4.0"
    assert fm["language"] == ["en", "fr"]  # from the documents' language labels, most common first
    assert fm["task_categories"] == ["text-generation"] and fm["size_categories"] == ["n<1K"]
    assert [f["path"] for f in fm["configs"][0]["data_files"]] == ["tokens/train/*.arrow", "tokens/val/*.arrow"]
    assert "## Recipe" in readme and "vocab_size = 300" in readme and "the terms its site publishes" not in readme


def test_datasets_loads_the_run_folder_through_the_cards_configs(local_run, tmp_path, monkeypatch):
    w, _ = local_run
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(w), cache_dir=str(tmp_path / "hf"))
    tokens = _json(w / "tokens" / "manifest.json")
    assert {s: ds[s].num_rows for s in ds} == tokens["documents"]
    assert sum(len(ids) for s in ds for ids in ds[s]["input_ids"]) == sum(tokens["tokens"].values())


def test_no_secret_of_the_recipe_reaches_the_card(local_run):
    w, raw = local_run
    assert SECRET in json.dumps(raw)  # planted
    for path in _card_files(w):
        assert SECRET.encode() not in path.read_bytes(), path
    recipe = _json(w / "card.json")["recipe"]
    assert recipe["description"] == "shared frontier at redis://***@127.0.0.1:6390/0"
    assert recipe["stages"][0]["endpoint_url"] == "http://***@127.0.0.1:9000/"


def test_a_rerun_changes_no_card_file_and_a_new_license_rewrites_it(local_run, tmp_path):
    w, raw = local_run
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in _card_files(w)}
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE and {o.status for o in res.stages} == {"skipped"}
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in _card_files(w)} == before
    # A copy of the run, rerun with another license: the card follows the recipe, the stages are untouched.
    copy = tmp_path / "w"
    shutil.copytree(w, copy)
    res = run_recipe(validate_recipe(dict(raw, workdir=str(copy), license="odc-by")))
    assert res.status == DONE and {o.status for o in res.stages} == {"skipped"}
    assert _front_matter((copy / "README.md").read_text())["license"] == "odc-by"


def test_a_rerun_reads_no_shard_while_the_manifests_are_the_same(local_run, monkeypatch):
    w, raw = local_run
    before = (w / "card.json").read_bytes()

    def no_scan(folder):
        raise AssertionError(f"{folder} scanned again")

    for name in ("scan_documents", "scan_domains", "scan_token_domains"):
        monkeypatch.setattr(corpusforge.card, name, no_scan)
    assert run_recipe(validate_recipe(raw)).status == DONE
    assert (w / "card.json").read_bytes() == before


def test_a_card_that_cannot_be_made_does_not_fail_the_run(tmp_path, monkeypatch, caplog):
    def broken(recipe, result):
        raise ValueError("no card today")

    raw = {"name": "t", "workdir": str(tmp_path / "w"), "workers": 1, "stages": [{"kind": "test_source", "docs": 5}]}
    assert run_recipe(validate_recipe(raw)).status == DONE
    assert (tmp_path / "w" / "card.json").is_file()
    monkeypatch.setattr(corpusforge.card, "write_run_card", broken)
    assert run_recipe(validate_recipe(raw)).status == DONE
    assert "the data card was not written (ValueError: no card today)" in caplog.text
    assert not (tmp_path / "w" / "card.json").exists() and not (tmp_path / "w" / "README.md").exists()


def test_without_matplotlib_the_card_has_no_plots_and_says_so(local_run, tmp_path, monkeypatch):
    w, _ = local_run
    copy = tmp_path / "w"
    shutil.copytree(w, copy)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    names = ["input", "clean", "dedup", "near_dedup", "tokenizer", "tokens"]
    kinds = ["read_jsonl", "process", "exact_dedup", "minhash_dedup", "tokenizer", "tokens"]
    stages = [
        CardStage(n, k, copy / n, "skipped", input=p) for n, k, p in zip(names, kinds, [None, *names[:-1]], strict=True)
    ]
    stages[-1].input = stages[-2].input = "near_dedup"
    card = write_card(copy, stages, name="cardtest")
    assert card["plots"] == {} and "matplotlib is not installed" in card["plots_note"]
    assert not list((copy / "card").glob("*.png"))  # the stale plots of the copied run are gone
    readme = (copy / "README.md").read_text()
    assert "matplotlib is not installed" in readme and "](card/" not in readme
    assert _front_matter(readme)["license"] == "unknown" and "declares no license" in readme
    _check_counts(copy, card)


# ------------------------------------------------------------------------------------ a crawl on loopback
def _site() -> dict[str, Page]:
    rng = random.Random(3)

    def page(title: str, words: int, head: str = "", links: str = "") -> bytes:
        body = f"<html><head><title>{title}</title>{head}</head><body><main><h1>{title}</h1>"
        body += "".join(f"<p>{_text(rng, 30)}</p>" for _ in range(words // 30)) + links + "</main></body></html>"
        return body.encode()

    names = ["a", "b", "c", "d"]
    links = "".join(f'<a href="/{n}.html">{n}</a> ' for n in names)
    links += '<a href="/private/x.html">x</a> <a href="/meta-noai.html">m</a> <a href="/header-noai.html">h</a>'
    pages = {f"/{n}.html": Page(page(f"Page {n}", 90 + 30 * i)) for i, n in enumerate(names)}
    pages["/"] = Page(page("Home", 60, links=links))
    pages["/private/x.html"] = Page(page("Private", 60))
    pages["/meta-noai.html"] = Page(page("No AI", 60, head='<meta name="robots" content="noai, noimageai">'))
    pages["/header-noai.html"] = Page(page("No AI header", 60), headers={"X-Robots-Tag": "noai"})
    pages["/robots.txt"] = Page(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    return pages


def test_card_of_a_crawl_counts_opt_outs_domains_and_fetch_dates(tmp_path):
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    with serve(_site()) as (base, _log):
        spider = tmp_path / "spider.toml"
        spider.write_text(f'name = "t"\nseeds = ["{base}"]\nallowed_domains = ["127.0.0.1"]\nmax_depth = 2\n')
        raw = {
            "name": "crawlcard",
            "workdir": str(tmp_path / "w"),
            "workers": 1,
            "stages": [
                {"kind": "crawl", "spider": str(spider), "seeds": [base], "min_delay_s": 0.0, "max_pages": 30},
                {
                    "kind": "process",
                    "name": "clean",
                    "tasks": 1,
                    "steps": [{"type": "extract", "extractor": "lxml"}, {"type": "length", "min_words": 70}],
                },
                {"kind": "exact_dedup", "name": "dedup"},
                {"kind": "tokenizer", "name": "tokenizer", "vocab_size": 300},
                {"kind": "tokens", "name": "tokens", "input": "dedup", "val_fraction": 0.2},
            ],
        }
        res = run_recipe(validate_recipe(raw))
    assert res.status == DONE, res.message
    w = tmp_path / "w"
    card = _json(w / "card.json")
    _check_counts(w, card)
    crawl = _stats(w / "crawl")[0]["dropped"]
    optouts = {k: v for k, v in crawl.items() if k.startswith("optout_") or k == "robots_disallowed"}
    assert card["optouts"]["by_reason"] == optouts and card["optouts"]["total"] == sum(optouts.values())
    assert optouts["robots_disallowed"] == 1 and sum(optouts.values()) - 1 == 2  # the two noai pages
    assert card["input"] == {"stage": "crawl", "domains": {"127.0.0.1": _json(w / "crawl" / "manifest.json")["rows"]}}
    assert card["dataset"]["stage"] == "dedup" and set(card["dataset"]["domains"]) == {"127.0.0.1"}
    fetched = card["dataset"]["fetched"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    assert started <= fetched["first"] <= fetched["last"] <= now
    assert fetched["documents"] == card["dataset"]["documents"]
    consent = card["dataset"]["consent"]
    if consent is not None:  # documents carry a consent record once the crawler writes one
        assert consent["documents"] == card["dataset"]["documents"]
    readme = (w / "README.md").read_text()
    assert "opt out or disallow crawling" in readme and f"Fetched between {fetched['first']}" in readme
    assert "`robots_disallowed` 1" in readme


# ------------------------------------------------------------------------------------------ small parts
@pytest.mark.parametrize(
    ("n", "label"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1_000, "1K<n<10K"),
        (9_999, "1K<n<10K"),
        (10_000, "10K<n<100K"),
        (99_999, "10K<n<100K"),
        (100_000, "100K<n<1M"),
        (999_999, "100K<n<1M"),
        (1_000_000, "1M<n<10M"),
        (10_000_000, "10M<n<100M"),
        (99_999_999, "10M<n<100M"),
        (100_000_000, "100M<n<1B"),
        (1_000_000_000, "1B<n<10B"),
        (10_000_000_000, "10B<n<100B"),
        (100_000_000_000, "100B<n<1T"),
        (999_999_999_999, "100B<n<1T"),
        (1_000_000_000_000, "n>1T"),
        (5 * 10**13, "n>1T"),
    ],
)
def test_size_categories_at_the_bucket_bounds(n, label):
    assert size_category(n) == label


def test_tokens_card_size_category_past_100k():
    manifest = {
        "tokens": {"train": 9 * 10**8, "val": 10**7},
        "documents": {"train": 2_400_000, "val": 25_000},
        "vocab_size": 8192,
        "dtype": "uint16",
        "eot_id": 0,
    }
    fm = _front_matter(dataset_card(manifest, name="big"))
    assert fm["size_categories"] == ["1M<n<10M"]


def test_a_failed_run_still_gets_a_card(tmp_path):
    raw = {
        "name": "broken",
        "workdir": str(tmp_path / "w"),
        "workers": 1,
        "stages": [
            {"kind": "test_source", "docs": 20, "tasks": 2, "fail_rank": 1},
            {"kind": "process", "name": "clean", "tasks": 1, "steps": [{"type": "test_min_words", "min_words": 5}]},
        ],
    }
    res = run_recipe(validate_recipe(raw))
    assert res.status == FAILED
    card = _json(tmp_path / "w" / "card.json")
    assert card["status"] == "failed" and "planned failure" in card["message"]
    assert [(s["name"], s["status"]) for s in card["stages"]] == [("test_source", "failed"), ("clean", "not run")]
    assert card["dataset"] is None and card["rows"] == 0
    readme = (tmp_path / "w" / "README.md").read_text()
    assert _front_matter(readme)["size_categories"] == ["n<1K"] and "a stage failed" in readme


@pytest.mark.parametrize("bad", ["CC BY 4.0", "", "-mit"])
def test_a_license_that_is_not_an_id_is_refused(tmp_path, bad):
    raw = {"name": "x", "workdir": str(tmp_path), "license": bad, "stages": [{"kind": "test_source"}]}
    with pytest.raises(ConfigError, match="license"):
        validate_recipe(raw)
    assert validate_recipe(raw | {"license": "Apache-2.0"}).license == "apache-2.0"
    assert validate_recipe({k: v for k, v in raw.items() if k != "license"}).license == "unknown"


def test_a_readme_of_the_users_own_in_the_workdir_is_never_overwritten(tmp_path):
    from corpusforge.card import CARD_ALT, write_card

    own = tmp_path / "README.md"
    own.write_text("# my project\n")
    write_card(tmp_path, [], name="x", license="unknown", status="done", plots=False)
    assert own.read_text() == "# my project\n"
    assert "pretty_name" in (tmp_path / CARD_ALT).read_text() and (tmp_path / "card.json").is_file()
    (tmp_path / "README.md").unlink()
    write_card(tmp_path, [], name="x", license="unknown", status="done", plots=False)
    first = (tmp_path / "README.md").read_text()
    write_card(tmp_path, [], name="y", license="unknown", status="done", plots=False)  # ours: rewritten
    assert first != (tmp_path / "README.md").read_text() and "# y" in (tmp_path / "README.md").read_text()


def test_a_card_that_cannot_be_made_never_deletes_the_users_readme(tmp_path, monkeypatch):
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    def broken(*_a, **_k):
        raise RuntimeError("a shard the card cannot read")

    monkeypatch.setattr(corpusforge.card, "write_run_card", broken)
    own = tmp_path / "w" / "README.md"
    own.parent.mkdir()
    own.write_text("# my project\n")
    raw = {"name": "t", "workdir": str(tmp_path / "w"), "stages": [{"kind": "test_source", "docs": 5}]}
    assert run_recipe(validate_recipe(raw)).status == 0
    assert own.read_text() == "# my project\n"  # it was unlinked as if it were a stale card
