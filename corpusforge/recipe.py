"""TOML recipe → validated recipe, before anything runs.

A recipe is ``name``, ``workdir``, ``workers`` and a list of ``[[stages]]``; each stage is a registry
``kind`` plus keyword arguments validated against that class's constructor (the constructor is the
schema). Errors name the field path, e.g. ``stages[2].steps[0].min_words: expected int >= 1, got -3``.

Precedence: constructor defaults < recipe < ``--set`` on the command line. A spider file never overrides a recipe
value; its politeness can only make a crawl slower (the crawler takes the larger ``min_delay_s``).
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import inspect
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from corpusforge.errors import ConfigError
from corpusforge.params import Max, Min, check_value, parse_value, schema_of, validate_kwargs
from corpusforge.redact import redact
from corpusforge.step import FunctionStep, Step, as_step


def build_step(spec: dict[str, Any], *, path: str) -> Step:
    """``{"type": name, **kwargs}`` → a constructed step, validated against its constructor.

    A registered plain function ``f(docs, rank, world_size, *, k=...)`` becomes a ``FunctionStep``; the
    table's other keys fill its keyword-only parameters.
    """
    from corpusforge.registry import STEPS

    if not isinstance(spec, dict):
        raise ConfigError(f'expected a table like {{ type = "extract" }}, got {spec!r}', path=path)
    if "type" not in spec:
        raise ConfigError("missing 'type' (the step's registry name)", path=f"{path}.type")
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    target = STEPS.get(spec["type"], path=f"{path}.type")
    if inspect.isclass(target):
        return as_step(target(**validate_kwargs(schema_of(target), kwargs, path)))
    if not callable(target):
        raise ConfigError(f"step {spec['type']!r} is registered as {target!r}, not a Step or a function", path=path)
    kw = validate_kwargs(target, kwargs, path)
    return FunctionStep(functools.partial(target, **kw) if kw else target, name=str(spec["type"]))


# ---------------------------------------------------------------------------------------------- recipe


@dataclass
class StageSpec:
    name: str
    kind: str
    input: str | None
    params: dict[str, Any]
    path: str  # field path of this stage in the recipe, for error messages


@dataclass
class Recipe:
    name: str
    workdir: Path
    workers: int
    stages: list[StageSpec]
    raw: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    executor: str = "local"  # "local" (processes on this machine) or "ray"
    ray_address: str | None = None  # None: start a local Ray instance; "auto" or "ray://host:port": join one
    license: str = "unknown"  # the data's license, for the run's data card (a Hugging Face license id)

    def stage_config(self, spec: StageSpec) -> dict[str, Any]:
        return {"kind": spec.kind, "input": spec.input, "params": spec.params}

    def fingerprint(self) -> str:
        """Hash of what defines the outputs (stage kinds, inputs and parameters; not workers or workdir)."""
        stages = redact([self.stage_config(s) | {"name": s.name} for s in self.stages])
        blob = json.dumps(stages, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# corpusforge_version and fingerprint are written into recipe.resolved.toml, which can be run again as is.
TOP_KEYS = {
    "name": str,
    "workdir": str,
    "workers": int,
    "executor": str,
    "ray_address": str,
    "description": str,
    "license": str,
    "stages": list,
    "corpusforge_version": str,
    "fingerprint": str,
}


EXECUTORS = ("local", "ray")

_INDEX = re.compile(r"\[(\d+)\]")


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b[0].c=value`` (or ``stage_name.key=value``) to the raw recipe dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}", path="--set")
    key, _, value = assignment.partition("=")
    parts = [p for p in _INDEX.sub(r".\1", key.strip()).split(".") if p]
    if not parts:
        raise ConfigError(f"--set: empty key in {assignment!r}", path="--set")
    stages = raw.get("stages")
    # A first part naming a stage is a shortcut for stages[i].
    if isinstance(stages, list) and parts[0] not in TOP_KEYS:
        for i, st in enumerate(stages):
            if isinstance(st, dict) and (st.get("name") or st.get("kind")) == parts[0]:
                parts = ["stages", str(i), *parts[1:]]
                break
    node: Any = raw
    for j, p in enumerate(parts[:-1]):
        nxt = node[int(p)] if isinstance(node, list) and p.isdigit() and int(p) < len(node) else None
        if isinstance(node, dict):
            nxt = node.setdefault(p, {})
        if nxt is None:
            raise ConfigError(f"--set: no such path {'.'.join(parts[: j + 1])!r}", path=key)
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set: index {last} out of range", path=key)
        node[int(last)] = parse_value(value)
    else:
        node[last] = parse_value(value)


def load_recipe_dict(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("recipe file not found", file=str(path))
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc}", file=str(path)) from exc


def validate_recipe(raw: dict[str, Any], *, source: str | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a raw recipe dict completely; raise ``ConfigError`` with the field path on the first problem."""
    from corpusforge.registry import STAGES

    try:
        for key, value in raw.items():
            if key not in TOP_KEYS:
                close = difflib.get_close_matches(key, list(TOP_KEYS), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown key.{hint} Allowed: {', '.join(TOP_KEYS)}", path=key)
            check_value(value, TOP_KEYS[key], key)
        if "name" not in raw:
            raise ConfigError("required key is missing", path="name")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", raw["name"]):
            raise ConfigError("use letters, digits, '.', '_' or '-'", path="name")
        workers = check_value(raw.get("workers", 2), Annotated[int, Min(1), Max(256)], "workers")
        executor = raw.get("executor", "local")
        if executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {executor!r}; one of: {', '.join(EXECUTORS)}", path="executor")
        license_id = raw.get("license", "unknown").lower()  # the Hub's ids are SPDX ids in lower case
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license_id):
            raise ConfigError(
                f"{raw['license']!r} is not a license id: use a Hugging Face id such as cc-by-4.0, apache-2.0, "
                "odc-by, other or unknown",
                path="license",
            )
        stages_raw = raw.get("stages")
        if not stages_raw:
            raise ConfigError("a recipe needs at least one [[stages]] entry", path="stages")
        specs: list[StageSpec] = []
        seen: set[str] = set()
        for i, st in enumerate(stages_raw):
            spath = f"stages[{i}]"
            if not isinstance(st, dict):
                raise ConfigError("expected a table", path=spath)
            if "kind" not in st:
                raise ConfigError(f"missing 'kind'; one of: {', '.join(STAGES.names())}", path=f"{spath}.kind")
            kind = check_value(st["kind"], str, f"{spath}.kind")
            cls = STAGES.get(kind, path=f"{spath}.kind")
            name = check_value(st.get("name", kind), str, f"{spath}.name")
            if name in seen:
                raise ConfigError(
                    f"duplicate stage name {name!r}; give each stage a distinct name", path=f"{spath}.name"
                )
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
                raise ConfigError("use letters, digits, '_' or '-'", path=f"{spath}.name")
            inp = st.get("input", specs[-1].name if specs else None)
            if inp is not None:
                inp = check_value(inp, str, f"{spath}.input")
                if inp not in seen:
                    raise ConfigError(
                        f"input {inp!r} is not an earlier stage; earlier stages: {', '.join(seen) or '(none)'}",
                        path=f"{spath}.input",
                    )
            table = {k: v for k, v in st.items() if k not in ("kind", "name", "input")}
            params = validate_kwargs(schema_of(cls), table, spath)
            stage = cls(**params)
            validate = getattr(stage, "validate", None)
            if callable(validate):
                validate(spath)
            specs.append(StageSpec(name=name, kind=kind, input=inp, params=params, path=spath))
            seen.add(name)
        workdir = Path(raw.get("workdir", f"runs/{raw['name']}"))
        if base_dir is not None and not workdir.is_absolute():
            workdir = Path.cwd() / workdir
    except ConfigError as exc:
        if source and exc.file is None:
            raise ConfigError(str(exc), path=None, file=source) from None
        raise
    return Recipe(
        name=raw["name"],
        workdir=workdir,
        workers=workers,
        stages=specs,
        raw=raw,
        source=source,
        executor=executor,
        ray_address=raw.get("ray_address"),
        license=license_id,
    )


def load_recipe(path: Path, overrides: list[str] | None = None, *, workdir: str | None = None) -> Recipe:
    raw = load_recipe_dict(path)
    raw = copy.deepcopy(raw)
    for o in overrides or []:
        apply_override(raw, o)
    if workdir:
        raw["workdir"] = workdir
    return validate_recipe(raw, source=str(path))
