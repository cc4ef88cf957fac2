"""Fine-tuning data: JSONL rows tokenized with the base model's tokenizer into fixed-length arrays.

- ``{"text": ...}``: a language-modelling example, every token a target;
- ``{"prompt": ..., "response": ...}``: the loss on the response only (prompt targets are -100, which
  ``cross_entropy`` leaves out); prompt and response are tokenized apart, the response ends with end-of-text;
- ``{"prompt": ..., "completions": [best, ..., worst]}`` (reward data): each completion after the prompt, one
  sequence each.

Sequences longer than the window are cut at its end (counted); shorter ones are padded with end-of-text,
whose targets are -100. A row left with nothing to learn from (a prompt that fills the window: no response
token in it, or for reward data no completion token) is dropped and counted; with every row dropped, an error. The validation rows are chosen by a hash of their line number, so the split does not
change when rows are appended.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corpusforge.errors import ConfigError

IGNORE = -100


def load_rows(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("data file not found", file=str(path), path="--data")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"line {n}: not JSON ({exc.msg})", file=str(path)) from None
        if not isinstance(row, dict):
            raise ConfigError(f"line {n}: expected a JSON object", file=str(path))
        row["_line"] = n
        rows.append(row)
    if not rows:
        raise ConfigError("no rows", file=str(path))
    return rows


class Encoder:
    def __init__(self, tokenizer_path: Path) -> None:
        from corpusforge.tokens.write import EOT, load_tokenizer

        self.tok = load_tokenizer(tokenizer_path)
        self.eot = int(self.tok.token_to_id(EOT))

    def __call__(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)


def is_val(line: int, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(str(line).encode(), digest_size=8).digest(), "big") / 2**64
    return h < val_fraction


@dataclass
class SftData:
    x: np.ndarray  # (N, L) int64 inputs
    y: np.ndarray  # (N, L) int64 targets, IGNORE where there is no loss
    val: np.ndarray  # (N,) bool
    truncated: int
    dropped: int = 0  # rows with no target token (the prompt filled the window)

    def __len__(self) -> int:
        return len(self.x)


def sft_data(rows: list[dict[str, Any]], enc: Encoder, length: int, val_fraction: float, where: str) -> SftData:
    xs, ys, val, cut, dropped = [], [], [], 0, 0
    for row in rows:
        if isinstance(row.get("text"), str):
            ids, first_target = enc(row["text"]) + [enc.eot], 0
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
            p = enc(row["prompt"])
            ids, first_target = p + enc(row["response"]) + [enc.eot], max(len(p) - 1, 0)
        else:
            raise ConfigError(
                f'line {row["_line"]}: expected {{"text"}} or {{"prompt", "response"}} strings', file=where
            )
        if first_target >= min(len(ids), length + 1) - 1:  # the prompt fills the window: no response token to learn
            dropped += 1
            continue
        if len(ids) > length + 1:
            ids, cut = ids[: length + 1], cut + 1
        x = np.full(length, enc.eot, dtype=np.int64)
        y = np.full(length, IGNORE, dtype=np.int64)
        n = len(ids) - 1
        x[:n] = ids[:-1]
        y[first_target:n] = ids[first_target + 1 :]
        xs.append(x)
        ys.append(y)
        val.append(is_val(row["_line"], val_fraction))
    if not xs:
        raise ConfigError(
            f"all {dropped} rows have a prompt that fills the model's window ({length} tokens): no response token "
            "is left to learn; shorten the prompts",
            file=where,
        )
    data = SftData(np.stack(xs), np.stack(ys), np.array(val), cut, dropped)
    _check_split(data.val, where, val_fraction)
    return data


@dataclass
class RankData:
    idx: np.ndarray  # (N, K, L) int64: prompt + completion k (best first), padded
    last: np.ndarray  # (N, K) int64: position of each sequence's last real token
    valid: np.ndarray  # (N, K) bool: prompts with fewer than K completions are padded
    val: np.ndarray  # (N,) bool
    truncated: int
    dropped: int = 0  # rows whose prompt filled the window: no completion token to tell them apart

    def __len__(self) -> int:
        return len(self.idx)


def rank_data(
    rows: list[dict[str, Any]], enc: Encoder, length: int, val_fraction: float, where: str, *, drop_full: bool = True
) -> RankData:
    """``drop_full=False`` (scoring): a row whose prompt fills the window is an error, not a dropped row."""
    for row in rows:
        comps = row.get("completions")
        if not isinstance(row.get("prompt"), str) or not isinstance(comps, list) or len(comps) < 2:
            raise ConfigError(
                f'line {row["_line"]}: expected {{"prompt": str, "completions": [best, ..., worst]}} with at least 2',
                file=where,
            )
    full = [i for i, r in enumerate(rows) if len(enc(r["prompt"])) >= length]  # no completion token fits after it
    if full and not drop_full:
        raise ConfigError(
            f"line {rows[full[0]].get('_line', full[0] + 1)}: the prompt fills the model's window ({length} tokens), "
            "so its completions cannot be scored; shorten the prompt",
            file=where,
        )
    if len(full) == len(rows):
        raise ConfigError(
            f"all {len(rows)} rows have a prompt that fills the model's window ({length} tokens): the completions "
            "cannot be told apart; shorten the prompts",
            file=where,
        )
    gone = set(full)
    kept = [r for i, r in enumerate(rows) if i not in gone]
    dropped, rows = len(rows) - len(kept), kept
    K = max(len(r["completions"]) for r in rows)
    idx = np.full((len(rows), K, length), enc.eot, dtype=np.int64)
    last = np.zeros((len(rows), K), dtype=np.int64)
    valid = np.zeros((len(rows), K), dtype=bool)
    cut = 0
    for n, row in enumerate(rows):
        p = enc(row["prompt"])
        for k, comp in enumerate(row["completions"]):
            ids = p + enc(str(comp)) + [enc.eot]
            if len(ids) > length:
                ids, cut = ids[:length], cut + 1
            idx[n, k, : len(ids)] = ids
            last[n, k] = len(ids) - 1
            valid[n, k] = True
    data = RankData(
        idx, last, valid, np.array([is_val(r.get("_line", i), val_fraction) for i, r in enumerate(rows)]), cut, dropped
    )
    if val_fraction > 0:
        _check_split(data.val, where, val_fraction)
    return data


def _check_split(val: np.ndarray, where: str, val_fraction: float) -> None:
    if val.all():
        raise ConfigError("every row fell in the validation split; add rows or lower val_fraction", file=where)
    if val_fraction > 0 and not val.any():
        raise ConfigError(
            f"no row fell in the validation split ({len(val)} rows, val_fraction {val_fraction}); add rows or raise it",
            file=where,
        )
