"""Recipe → an ordered plan of stages with their folders, inputs and config hashes.

Multi-stage algorithms are expanded here (``Stage.expand``), so their sub-stages share one recipe entry and
cannot disagree about inputs or task counts. Each entry's config hash covers its own parameters and the hash
of the entry it reads, so a changed upstream stage invalidates everything downstream.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpusforge.recipe import Recipe, StageSpec
from corpusforge.redact import redact
from corpusforge.registry import STAGES
from corpusforge.stage import Stage, StageContext


@dataclass
class PlanEntry:
    name: str  # "clean", or "dedup.signatures" for a sub-stage
    spec: StageSpec
    stage: Stage
    out_dir: Path
    in_dir: Path | None
    home: Path
    config_hash: str
    external: bool = False  # an existing folder outside the workdir (kind "shards"): never written

    def context(self, recipe: Recipe, stage_dirs: dict[str, Path], **kw: Any) -> StageContext:
        return StageContext(
            run_dir=recipe.workdir,
            out_dir=self.out_dir,
            in_dir=self.in_dir,
            stage_name=self.name,
            home=self.home,
            workers=recipe.workers,
            stage_dirs=stage_dirs,
            **kw,
        )


def _hash(obj: Any) -> str:
    # Over the redacted form: a resolved recipe, where credentials read ***, is the same config.
    return hashlib.sha256(json.dumps(redact(obj), sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_plan(recipe: Recipe) -> list[PlanEntry]:
    entries: list[PlanEntry] = []
    final_dir: dict[str, Path] = {}
    final_hash: dict[str, str] = {}
    for spec in recipe.stages:
        cls = STAGES.get(spec.kind, path=f"{spec.path}.kind")
        top = cls(**spec.params)
        top.name, top.input = spec.name, spec.input
        home = top.external_dir() if hasattr(top, "external_dir") else recipe.workdir / spec.name
        if hasattr(top, "snapshot_dir"):  # a crawl folder holds its snapshots: the one this run writes or resumes
            home = top.snapshot_dir(home)
        in_dir = final_dir.get(spec.input) if spec.input else None
        in_hash = final_hash.get(spec.input, "") if spec.input else ""
        subs = top.expand()
        for sub in subs:
            sub.name, sub.input = spec.name, spec.input
            out_dir = home / sub.subdir if sub.subdir else home
            name = f"{spec.name}.{sub.subdir}" if sub.subdir else spec.name
            params = {k: v for k, v in spec.params.items() if k not in sub.runtime_params}
            h = _hash(
                {"kind": spec.kind, "params": params, "sub": sub.subdir, "input": in_hash, "config": sub.config()}
            )
            entries.append(
                PlanEntry(
                    name=name,
                    spec=spec,
                    stage=sub,
                    out_dir=out_dir,
                    in_dir=in_dir,
                    home=home,
                    config_hash=h,
                    external=hasattr(top, "external_dir"),
                )
            )
        final_dir[spec.name] = home
        final_hash[spec.name] = entries[-1].config_hash
    return entries


def stage_dirs(plan: list[PlanEntry]) -> dict[str, Path]:
    """Recipe stage name → its folder, for stages that read more than their input (tokens → tokenizer)."""
    return {e.spec.name: e.home for e in plan}
