"""``corpusforge ablate --demo``: on the embedded demo site, raw (main text only) vs cleaned vs cleaned and
deduplicated, compared on held-out pages the site does not serve (``demo/heldout.py``).

The three variants share the crawl; cleaned and cleaned_dedup share the clean stage. The base is raw, so
the tokenizer is trained on raw text (the same for all three).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from corpusforge.ablate import ablation_from_dict, run_ablation
from corpusforge.demo.run import DEMO_PORT, SPIDER_TOML, _free_port

# ~2 passes over the raw corpus (~390,000 tokens); six trainings of the demo's GPT fit in the 15 minutes.
DEMO_TOKENS = 800_000
DEMO_SEEDS = 2


def demo_recipes(seed_url: str, spider: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """The demo's stages without the trainer ("demo"), and the same with extraction only ("demo-raw")."""
    from corpusforge.defaults import demo_recipe

    full = demo_recipe(seed_url=seed_url, spider=spider, workdir=workdir, pages=400, train_iters=1)
    full["stages"] = [s for s in full["stages"] if s["kind"] not in ("tokenizer", "tokens", "train")]
    raw = copy.deepcopy(full)
    clean = next(s for s in raw["stages"] if s.get("name") == "clean")
    clean["steps"] = [st for st in clean["steps"] if st["type"] == "extract"]
    return {"demo": full, "demo-raw": raw}


def run_ablate_demo(
    workdir: Path, *, tokens: int = DEMO_TOKENS, seeds: int = DEMO_SEEDS, force: bool = False, quiet: bool = False
) -> tuple[int, dict[str, Any] | None, float]:
    """(exit status, report, wall seconds)."""
    from corpusforge.demo.heldout import write_heldout_pages
    from corpusforge.demo.server import serve
    from corpusforge.demo.site import build_site

    t0 = time.time()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    pages = write_heldout_pages(workdir / "heldout-pages")
    port = _free_port(DEMO_PORT)
    with serve(build_site(), port=port) as (base, _log):
        spider = workdir / "demo-spider.toml"
        text = SPIDER_TOML.format(seed=base)
        if not spider.is_file() or spider.read_text() != text:
            spider.write_text(text)
        spec = {
            "name": "demo",
            "base": "demo-raw",
            "base_name": "raw",
            "corpus": "clean",  # raw and cleaned train on the clean stage's output; cleaned_dedup on near_dedup's
            "heldout": str(pages),
            "heldout_extractor": "lxml",  # as the demo's clean stage
            "tokens": tokens,
            "seeds": seeds,
            "evals": 6,
            "vocab_size": 2048,
            "variants": {
                "cleaned": {"recipe": "demo"},
                "cleaned_dedup": {"recipe": "demo", "corpus": "near_dedup"},
            },
        }
        ab = ablation_from_dict(
            spec,
            base_dir=workdir,
            source="corpusforge ablate --demo",
            workdir=workdir,
            recipes=demo_recipes(base, spider, workdir),
        )
        status, report = run_ablation(ab, force=force, quiet=quiet)
    return status, report, time.time() - t0
