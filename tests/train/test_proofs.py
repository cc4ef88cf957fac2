"""Proofs of trainer RELIABILITY items the audit found weakly tested: 39 (safetensors export), 40 (CPU when
CUDA is hidden), 27 (a cut token shard is refused before training)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from corpusforge.errors import ShardError  # noqa: E402
from corpusforge.storage import MANIFEST, file_record  # noqa: E402
from corpusforge.train import checkpoint as ckpt  # noqa: E402
from corpusforge.train.config import TrainConfig  # noqa: E402
from corpusforge.train.train import train  # noqa: E402
from tests.conftest import cli_env  # noqa: E402
from tests.train.test_train import TINY, tokens  # noqa: E402,F401  (the module's tokens fixture)


@pytest.mark.slow
def test_export_writes_safetensors_and_no_pickle(tokens, tmp_path):  # noqa: F811
    """39: the export folder holds model.safetensors and no pytorch_model.bin, *.pkl, *.pt or *.pth."""
    from safetensors.torch import load_file

    from corpusforge.train.export import export_gpt2

    out = tmp_path / "o"
    train(TrainConfig(**TINY, max_iters=4, eval_interval=4), tokens, out, quiet=True)
    dest = export_gpt2(out, tmp_path / "hf", tokenizer_path=tokens.parent / "tokenizer.json")
    names = {p.name for p in Path(dest).rglob("*") if p.is_file()}
    assert "model.safetensors" in names, names
    pickled = {n for n in names if n == "pytorch_model.bin" or n.endswith((".pkl", ".pt", ".pth", ".bin"))}
    assert not pickled, pickled
    weights = load_file(str(Path(dest) / "model.safetensors"))
    assert "transformer.wte.weight" in weights or "wte.weight" in weights, sorted(weights)[:5]
    assert not (Path(dest) / "model.safetensors").read_bytes().startswith(b"\x80")  # not a pickle stream


@pytest.mark.slow
def test_hidden_cuda_trains_on_the_cpu(tokens, tmp_path):  # noqa: F811
    """40: CUDA_VISIBLE_DEVICES="" and device auto: the trainer says it runs on the CPU and finishes."""
    env = cli_env() | {"CUDA_VISIBLE_DEVICES": ""}
    sets = [x for k, v in (TINY | {"max_iters": 4, "eval_interval": 4}).items() for x in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "corpusforge.cli", "train", str(tokens), "--out", "o", "--set", "device=auto"]
    out = subprocess.run([*cmd, *sets], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "; device cpu;" in out.stdout, out.stdout
    loaded = ckpt.load_latest(tmp_path / "o" / "checkpoints")
    assert loaded is not None and loaded.state["step"] == 4 and loaded.state["train"]["device"] == "auto"


def _cut_train_shard(src: Path, dest: Path, *, relist: bool) -> Path:
    """A copy of the tokens folder ``src`` whose first train shard lost its last record batch (an IPC stream cut at a batch
    boundary); with ``relist`` the manifest's size and digests are those of the cut file (only rows differ)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    shutil.copytree(src, dest)
    shard = sorted((dest / "train").glob("*.arrow"))[0]
    batches = list(ipc.open_stream(pa.BufferReader(shard.read_bytes())))  # not a map: rewritten below
    keep = batches[:-1] if len(batches) > 1 else [batches[0].slice(0, batches[0].num_rows - 1)]
    with pa.OSFile(str(shard), "wb") as sink, ipc.new_stream(sink, batches[0].schema) as w:
        for b in keep:
            w.write_batch(b)
    if relist:
        m = json.loads((dest / MANIFEST).read_text())
        name = shard.relative_to(dest).as_posix()
        entry = next(f for f in m["files"] if f["name"] == name)
        entry.update({k: v for k, v in file_record(shard, name=name).items() if k not in ("name", "rows")})
        (dest / MANIFEST).write_text(json.dumps(m))
    return shard


@pytest.mark.parametrize("relist", [False, True], ids=["size", "rows"])
def test_a_cut_token_shard_is_refused_before_training(tokens, tmp_path, relist):  # noqa: F811
    """27: TokenData (verify off, as the CLI's --set verify_data=false) and the trainer refuse a token shard
    cut at a batch boundary, naming the file, before any checkpoint exists."""
    from corpusforge.train.data import TokenData

    shard = _cut_train_shard(tokens, tmp_path / "tokens", relist=relist)
    for verify in (False, True):
        with pytest.raises(ShardError, match=rf"{shard.name}: (missing or size differs|\d+ rows, manifest)"):
            TokenData(tmp_path / "tokens", "train", 32, 0, verify=verify)
    out = tmp_path / "o"
    with pytest.raises(ShardError, match=shard.name):
        train(TrainConfig(**TINY, max_iters=2, eval_interval=2), tmp_path / "tokens", out, quiet=True)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
