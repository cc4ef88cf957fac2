"""``corpusforge ablate ABLATION.toml``: does a pipeline change help? Small models trained on each variant of a
corpus, compared on the same held-out text.

An ablation file names a base recipe, variants of it (``--set`` overrides and/or another recipe), a held-out
set, the model, a token budget and seeds::

    base = "pipelines/local_html.toml"
    heldout = "heldout.jsonl"          # JSONL, a folder of HTML pages, or a finished stage folder
    tokens = 2_000_000                 # training tokens per model
    seeds = 2
    [variants.no_gopher]
    set = ["clean.steps[3].min_words=5"]

Fair by construction:
- one tokenizer for every variant (``tokenizer = "path"``, or trained once on the base variant's corpus);
- the same model, optimizer, schedule and number of training tokens for each (``[model]``: ``TrainConfig``
  fields; the ablation sets ``seed``, ``max_iters``, ``eval_interval`` and ``heldout`` itself);
- every variant's corpus is decontaminated from the held-out set first (``dedup/decontam.py``), counted;
- the metric is held-out bits per byte (``train/heldout.py``), which does not depend on the tokenizer.

The folder::

    <workdir>/heldout/            a run: the held-out documents
    <workdir>/variants/<name>/    a run per variant: its stages, decontamination, tokens, one train per seed
    <workdir>/ablation.json  ablation.md  ablation.png

Variants share every stage they have in common: each stage's identity is the plan's config hash, which covers
its parameters and everything upstream, whatever it is called. A variant's run holds only the stages no
earlier variant built; it reads the last shared ones from their owner's folder (a ``shards`` stage), and a
variant whose every stage was built already (an identical variant) runs nothing. Variants run one after
another, each through the runner, so a killed ablation resumes: finished stages and seeds are kept, a
training resumes from its checkpoint. Results and verdicts: ``ablate_report.py``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpusforge.errors import DONE, ConfigError
from corpusforge.params import check_value, validate_kwargs
from corpusforge.recipe import apply_override, load_recipe_dict, validate_recipe
from corpusforge.storage import MANIFEST, atomic_write_json, load_manifest, workdir_lock

log = logging.getLogger(__name__)

# The demo's small GPT (``defaults.demo_recipe``): the model an ablation trains unless ``[model]`` says otherwise.
DEFAULT_MODEL: dict[str, Any] = {
    "n_layer": 2,
    "n_head": 4,
    "n_embd": 128,
    "block_size": 128,
    "batch_size": 16,
    "lr": 2e-3,
}
SET_BY_ABLATION = frozenset({"seed", "max_iters", "eval_interval", "heldout", "warmup_iters"})
NOT_CORPUS = frozenset({"tokenizer", "tokens", "train"})  # stage kinds the ablation replaces with its own
TOP_KEYS = {
    "name": str,
    "workdir": str,
    "base": str,
    "base_name": str,
    "corpus": str,
    "heldout": str,
    "heldout_extractor": str,
    "tokenizer": str,
    "vocab_size": int,
    "tokenizer_algorithm": str,
    "tokens": int,
    "seeds": object,
    "evals": int,
    "workers": int,
    "model": dict,
    "variants": dict,
}
VARIANT_KEYS = ("recipe", "set", "corpus")
LINK_FILE = "ablation-link.json"  # in a variant's run folder: its card links back to the ablation


@dataclass
class Variant:
    name: str
    raw: dict[str, Any]  # its recipe after the overrides
    corpus: str  # the stage whose documents it trains on
    where: str  # for errors: "ABLATION.toml variants.x"


@dataclass
class Ablation:
    name: str
    workdir: Path
    variants: list[Variant]  # the base first
    heldout: Path
    heldout_extractor: str = "trafilatura"
    tokenizer: Path | None = None
    vocab_size: int = 2048
    tokenizer_algorithm: str = "bpe"
    tokens: int = 2_000_000
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    evals: int = 8
    workers: int = 2
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    source: str = "ablation"

    @property
    def base(self) -> Variant:
        return self.variants[0]

    @property
    def tokens_per_iter(self) -> int:
        m = self.model
        return int(m.get("batch_size", 12)) * int(m.get("block_size", 64)) * int(m.get("grad_accum", 1))

    @property
    def max_iters(self) -> int:
        return max(1, math.ceil(self.tokens / self.tokens_per_iter))

    @property
    def eval_interval(self) -> int:
        return max(1, math.ceil(self.max_iters / self.evals))  # evals evaluations, the last at max_iters

    def variant_dir(self, v: Variant) -> Path:
        return self.workdir / "variants" / v.name

    def tokenizer_path(self) -> Path:
        if self.tokenizer is not None:
            return self.tokenizer
        return self.variant_dir(self.base) / "tokenizer" / "tokenizer.json"


# ------------------------------------------------------------------------------------------ the file
def _corpus_of(raw: dict[str, Any], where: str) -> str:
    """The default training corpus of a recipe: its tokens stage's input, else its last document stage."""
    recipe = validate_recipe(raw, source=where)
    for spec in recipe.stages:
        if spec.kind == "tokens" and spec.input:
            return spec.input
    docs = [s.name for s in recipe.stages if s.kind not in NOT_CORPUS]
    if not docs:
        raise ConfigError("the recipe has no document stage to train on", file=where)
    return docs[-1]


def make_variant(name: str, raw: dict[str, Any], overrides: list[str], corpus: str | None, where: str) -> Variant:
    before = copy.deepcopy(raw)
    raw = copy.deepcopy(raw)
    for o in overrides:
        apply_override(raw, o)
    corpus = corpus or _corpus_of(raw, where)
    kept = {s["name"] for s in corpus_stages(raw, corpus, where)}
    # An override of a stage the ablation does not use (tokenizer, tokens, train, another branch) would be
    # silently ignored: refuse it.
    old = {s.get("name", s.get("kind")): s for s in before.get("stages", [])}
    for st in raw.get("stages", []):
        sname = st.get("name", st.get("kind"))
        if sname not in kept and old.get(sname) != st:
            raise ConfigError(
                f"variant {name!r} changes stage {sname!r}, which the ablation does not train on (it replaces "
                "tokenizer, tokens and train stages with its own: set the model in [model])",
                file=where,
            )
    if {k: v for k, v in raw.items() if k != "stages"} != {k: v for k, v in before.items() if k != "stages"}:
        raise ConfigError(
            f"variant {name!r} changes a recipe's top-level keys; the ablation sets name, workdir and workers",
            file=where,
        )
    return Variant(name=name, raw=raw, corpus=corpus, where=where)


def corpus_stages(raw: dict[str, Any], corpus: str, where: str) -> list[dict[str, Any]]:
    """The stages ``corpus`` is made from (it and its ancestors), in recipe order, with names and inputs
    written out (dropping a stage must not change which stage another one reads)."""
    recipe = validate_recipe(raw, source=where)
    specs = {s.name: s for s in recipe.stages}
    if corpus not in specs:
        close = difflib.get_close_matches(corpus, list(specs), n=1)
        raise ConfigError(
            f"corpus {corpus!r} is not a stage of the recipe"
            + (f"; did you mean {close[0]!r}?" if close else f"; stages: {', '.join(specs)}"),
            path="corpus",
            file=where,
        )
    if specs[corpus].kind in NOT_CORPUS:
        raise ConfigError(f"corpus {corpus!r} is a {specs[corpus].kind} stage, not documents", path="corpus")
    need: set[str] = set()
    name: str | None = corpus
    while name is not None:
        need.add(name)
        name = specs[name].input
    out = []
    for i, spec in enumerate(recipe.stages):
        if spec.name in need:
            st = copy.deepcopy(raw["stages"][i])
            st["name"], st["input"] = spec.name, spec.input
            if st["input"] is None:
                st.pop("input")
            out.append(st)
    return out


def _seeds(value: Any) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, int | list):
        raise ConfigError("expected a number of seeds or a list of seeds", path="seeds")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError("at least one seed", path="seeds")
        return list(range(1, value + 1))
    if (
        not value
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)
        or len(set(value)) < len(value)
    ):
        raise ConfigError("expected a list of distinct integers", path="seeds")
    return list(value)


def load_ablation(path: Path, *, workdir: Path | None = None) -> Ablation:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("ablation file not found", file=str(path))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from exc
    try:
        return ablation_from_dict(raw, base_dir=path.parent, source=str(path), workdir=workdir)
    except ConfigError as exc:
        if exc.file is None:
            raise ConfigError(str(exc), file=str(path)) from None
        raise


def _path(base_dir: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base_dir / p)


def ablation_from_dict(
    raw: dict[str, Any],
    *,
    base_dir: Path,
    source: str,
    workdir: Path | None = None,
    recipes: dict[str, Any] | None = None,
) -> Ablation:
    """Validate an ablation (the TOML's dict). ``recipes``: recipe dicts by name, for ``base`` and a variant's
    ``recipe`` that are built in code (``--demo``) rather than read from files."""
    recipes = recipes or {}
    for key, value in raw.items():
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(key, list(TOP_KEYS), n=1)
            raise ConfigError(
                f"unknown key.{f' Did you mean {close[0]!r}?' if close else ''} Allowed: {', '.join(TOP_KEYS)}",
                path=key,
            )
        if TOP_KEYS[key] is not object:
            check_value(value, TOP_KEYS[key], key)
    for key in ("base", "heldout"):
        if key not in raw:
            raise ConfigError("required key is missing", path=key)

    def recipe_dict(ref: str, where: str) -> dict[str, Any]:
        if ref in recipes:
            return copy.deepcopy(recipes[ref])
        p = _path(base_dir, ref)
        if not p.is_file():
            raise ConfigError(f"recipe {ref!r} not found (looked for {p})", path=where)
        return load_recipe_dict(p)

    name = raw.get("name") or Path(source).stem
    base_raw = recipe_dict(raw["base"], "base")
    base_name = raw.get("base_name", "base")
    variants = [make_variant(base_name, base_raw, [], raw.get("corpus"), f"{source} base")]
    for vname, table in raw.get("variants", {}).items():
        where = f"variants.{vname}"
        if not isinstance(table, dict):
            raise ConfigError("expected a table with recipe, set and/or corpus", path=where)
        for k in table:
            if k not in VARIANT_KEYS:
                raise ConfigError(f"unknown key {k!r}; allowed: {', '.join(VARIANT_KEYS)}", path=f"{where}.{k}")
        if vname == base_name or not vname.replace("_", "a").replace("-", "a").isalnum():
            raise ConfigError("a variant name: letters, digits, '_' or '-', other than the base's", path=where)
        overrides = table.get("set", [])
        if isinstance(overrides, str):
            overrides = [overrides]
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError("expected a list of KEY=VALUE strings", path=f"{where}.set")
        vraw = recipe_dict(table["recipe"], f"{where}.recipe") if "recipe" in table else base_raw
        variants.append(
            make_variant(vname, vraw, overrides, table.get("corpus") or raw.get("corpus"), f"{source} {where}")
        )
    model = dict(DEFAULT_MODEL) | dict(raw.get("model", {}))
    reserved = sorted(SET_BY_ABLATION & set(raw.get("model", {})))
    if reserved:
        raise ConfigError(f"{', '.join(reserved)}: set by the ablation (tokens, seeds, evals)", path="model")
    from corpusforge.train.config import TrainConfig

    validate_kwargs(TrainConfig, model, "model")
    tokens = check_value(raw.get("tokens", 2_000_000), int, "tokens")
    if tokens < 1:
        raise ConfigError("expected a positive number of training tokens", path="tokens")
    evals = raw.get("evals", 8)
    if evals < 1:
        raise ConfigError("at least one evaluation", path="evals")
    heldout = _path(base_dir, raw["heldout"])
    if not heldout.exists():
        raise ConfigError(f"held-out set {raw['heldout']!r} not found (looked for {heldout})", path="heldout")
    tok = _path(base_dir, raw["tokenizer"]) if raw.get("tokenizer") else None
    if tok is not None and tok.is_dir():
        tok = tok / "tokenizer.json"
    if tok is not None and not tok.is_file():
        raise ConfigError(f"tokenizer {raw['tokenizer']!r} not found", path="tokenizer")
    wd = Path(workdir) if workdir else _path(Path.cwd(), raw.get("workdir", f"runs/ablate-{name}"))
    return Ablation(
        name=name,
        workdir=wd.absolute(),
        variants=variants,
        heldout=heldout.absolute(),
        heldout_extractor=raw.get("heldout_extractor", "trafilatura"),
        tokenizer=tok.absolute() if tok else None,
        vocab_size=raw.get("vocab_size", 2048),
        tokenizer_algorithm=raw.get("tokenizer_algorithm", "bpe"),
        tokens=tokens,
        seeds=_seeds(raw.get("seeds", 2)),
        evals=evals,
        workers=raw.get("workers", 2),
        model=model,
        source=source,
    )


# ------------------------------------------------------------------------------------------ the recipes
def heldout_recipe(ab: Ablation) -> dict[str, Any]:
    """The run that turns the held-out set into a document folder (stage ``heldout``)."""
    src = ab.heldout
    if (src / MANIFEST).is_file():
        stages: list[dict[str, Any]] = [{"kind": "shards", "name": "heldout", "path": str(src)}]
    elif src.is_dir():
        stages = [
            {"kind": "read_html", "name": "pages", "path": str(src)},
            {
                "kind": "process",
                "name": "heldout",
                "tasks": 1,
                "steps": [{"type": "extract", "extractor": ab.heldout_extractor}, {"type": "normalize"}],
            },
        ]
    elif src.name.endswith((".jsonl", ".jsonl.gz")):
        stages = [{"kind": "read_jsonl", "name": "heldout", "path": str(src)}]
    else:
        raise ConfigError(
            f"held-out set {str(src)!r}: expected a .jsonl file, a folder of .html files or a finished stage folder",
            path="heldout",
        )
    return {"name": f"{ab.name}-heldout", "workdir": str(ab.workdir / "heldout"), "workers": 1, "stages": stages}


def folder_digest(folder: Path) -> str:
    """sha256 over the files a finished folder's manifest lists (names and their sha256)."""
    files = load_manifest(folder)["files"]
    blob = json.dumps([(f["name"], f["sha256"]) for f in files], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def variant_recipe(ab: Ablation, v: Variant, heldout_dir: Path, heldout_sha: str) -> dict[str, Any]:
    """Everything variant ``v`` trains: its corpus stages, decontamination, token shards, one train per seed."""
    stages = corpus_stages(v.raw, v.corpus, v.where)
    mine = {"decontaminate", "tokenizer", "tokens", *(f"train-seed{s}" for s in ab.seeds)}
    clash = sorted(mine & {s["name"] for s in stages})
    if clash:
        raise ConfigError(
            f"stage name(s) {', '.join(clash)} are the ablation's own; rename them in the recipe", file=v.where
        )
    stages.append(
        {
            "kind": "decontaminate",
            "name": "decontaminate",
            "input": v.corpus,
            "heldout": str(heldout_dir),
            "heldout_sha256": heldout_sha,
        }
    )
    if v is ab.base and ab.tokenizer is None:
        stages.append(
            {
                "kind": "tokenizer",
                "name": "tokenizer",
                "input": "decontaminate",
                "vocab_size": ab.vocab_size,
                "algorithm": ab.tokenizer_algorithm,
            }
        )
    stages.append(
        {
            "kind": "tokens",
            "name": "tokens",
            "input": "decontaminate",
            "tokenizer": str(ab.tokenizer_path()),
            "val_fraction": 0.0,  # every variant trains on all of its corpus: the held-out set is the evaluation
        }
    )
    for s in ab.seeds:
        stages.append(
            {
                "kind": "train",
                "name": f"train-seed{s}",
                "input": "tokens",
                "eval_iters": 2,  # the loss on its own training data, a by-product: held-out bits/byte is the metric
                "sample_tokens": 0,
                "keep_checkpoints": 1,
                **ab.model,
                "seed": s,
                "max_iters": ab.max_iters,
                "warmup_iters": max(ab.max_iters // 10, 1),
                "eval_interval": ab.eval_interval,
                "heldout": str(heldout_dir),
            }
        )
    top: dict[str, Any] = {k: v.raw[k] for k in ("license", "executor", "ray_address") if k in v.raw}
    return {
        "name": f"{ab.name}-{v.name}",
        "workdir": str(ab.variant_dir(v)),
        "workers": ab.workers,
        **top,
        "stages": stages,
    }


def stage_keys(raw: dict[str, Any], source: str) -> tuple[dict[str, str], dict[str, Path]]:
    """Per recipe stage: its identity (the plan's config hash of its last sub-stage, which covers everything
    upstream) and its folder."""
    from corpusforge.plan import make_plan, stage_dirs

    plan = make_plan(validate_recipe(raw, source=source))
    keys = {e.spec.name: e.config_hash for e in plan}  # the last entry of an expanded stage wins
    return keys, stage_dirs(plan)


@dataclass
class Owner:
    variant: str
    stage: str
    folder: Path


@dataclass
class VariantPlan:
    variant: Variant
    recipe: dict[str, Any] | None  # what runs in its folder; None: every stage was built by an earlier variant
    shared: dict[str, Owner]  # its stages built by an earlier variant
    folders: dict[str, Path]  # stage name → the folder that holds it (its own or the owner's)


def share(ab: Ablation, full: dict[str, Any], v: Variant, owners: dict[str, Owner]) -> VariantPlan:
    """Which of ``full``'s stages an earlier variant built (``owners``: key → owner, updated with this
    variant's own), and the recipe of the rest: each shared stage an own stage reads becomes a ``shards`` stage
    of the same name over the owner's folder."""
    keys, dirs = stage_keys(full, v.where)
    shared = {name: owners[k] for name, k in keys.items() if k in owners}
    own = [st for st in full["stages"] if st["name"] not in shared]
    folders = {name: (shared[name].folder if name in shared else dirs[name]) for name in keys}
    if not own:
        return VariantPlan(v, None, shared, folders)
    read = {st.get("input") for st in own}
    standins = [
        {"kind": "shards", "name": name, "path": str(owner.folder), "track_config": True}
        for name, owner in shared.items()
        if name in read
    ]
    recipe = dict(full, stages=standins + own)
    for name, k in keys.items():
        if name not in shared:
            owners[k] = Owner(v.name, name, dirs[name])
    return VariantPlan(v, recipe, shared, folders)


# ------------------------------------------------------------------------------------------ running
def stale_tokens(ab: Ablation, wd: Path, *, force: bool) -> None:
    """A variant's token shards (and the models trained on them) made with another tokenizer than today's:
    after ``--force`` rebuilt the base variant's tokenizer, or when a given tokenizer file changed. Their
    configs name the tokenizer by path, so the runner would keep them: with ``force`` they are removed here
    (and rebuilt), else refused."""
    import shutil

    from corpusforge.storage import sha256_file

    tok, manifest = ab.tokenizer_path(), wd / "tokens" / MANIFEST
    if not tok.is_file() or not manifest.is_file():
        return
    if json.loads(manifest.read_text()).get("tokenizer_sha256") == sha256_file(tok):
        return
    if not force:
        raise ConfigError(
            f"{wd / 'tokens'} was made with another tokenizer than {tok} (it changed since); rerun with --force to "
            "rebuild this variant's tokens and models with it",
            path="tokenizer",
        )
    for folder in [wd / "tokens", *(wd / f"train-seed{s}" for s in ab.seeds)]:
        if folder.exists():
            log.warning("--force: %s was made with another tokenizer; removing it", folder)
            shutil.rmtree(folder)


def run_ablation(ab: Ablation, *, force: bool = False, quiet: bool = False) -> tuple[int, dict[str, Any] | None]:
    """Run (or resume) every variant and seed, then write the report; (exit status, the report or None)."""
    from corpusforge.ablate_report import collect, write_report
    from corpusforge.console import run_with_progress

    ab.workdir.mkdir(parents=True, exist_ok=True)
    # Every variant's recipe is checked before anything runs (a placeholder held-out digest).
    for v in ab.variants:
        validate_recipe(variant_recipe(ab, v, ab.workdir / "heldout" / "heldout", "0" * 64), source=v.where)
    with workdir_lock(ab.workdir):
        say = (lambda *_: None) if quiet else print
        say(f"ablate: the held-out set ({ab.heldout})")
        held = validate_recipe(heldout_recipe(ab), source=f"{ab.source} heldout")
        res = run_with_progress(held, force=force, quiet=True)
        if res.status != DONE:
            return res.status, None
        from corpusforge.plan import make_plan, stage_dirs

        heldout_dir = stage_dirs(make_plan(held))["heldout"]
        from corpusforge.train.heldout import load_texts

        load_texts(heldout_dir)  # text in it, before any variant is built (not at the first training)
        heldout_sha = folder_digest(heldout_dir)
        owners: dict[str, Owner] = {}
        plans: list[VariantPlan] = []
        for i, v in enumerate(ab.variants, 1):
            full = variant_recipe(ab, v, heldout_dir, heldout_sha)
            vp = share(ab, full, v, owners)
            plans.append(vp)
            by = sorted({o.variant for o in vp.shared.values()})
            what = f"{len(vp.shared)} stage(s) shared with {', '.join(by)}" if vp.shared else "nothing shared"
            if vp.recipe is None:
                say(f"ablate: variant {v.name} ({i} of {len(ab.variants)}): every stage built already ({what})")
                continue
            say(f"ablate: variant {v.name} ({i} of {len(ab.variants)}): {what}; {len(vp.recipe['stages'])} stage(s)")
            wd = ab.variant_dir(v)
            stale_tokens(ab, wd, force=force)
            wd.mkdir(parents=True, exist_ok=True)
            atomic_write_json(wd / LINK_FILE, {"ablation": ab.name, "variant": v.name, "report": "../../ablation.md"})
            res = run_with_progress(validate_recipe(vp.recipe, source=v.where), force=force, quiet=quiet)
            if res.status != DONE:
                say(f"ablate: variant {v.name} stopped ({res.status}); run again to resume")
                return res.status, None
        report = collect(ab, plans, heldout_dir, heldout_sha)
        write_report(ab, report)
    return DONE, report
