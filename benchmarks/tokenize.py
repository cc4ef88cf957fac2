"""Tokenizer training and tokenize-to-shards against their peers, same text and same tokenizer, same run.

Text (made offline, nothing downloaded), never repeated, so the encoder's caches see words as a real corpus
gives them (Zipfian: a few thousand frequent words, a long tail of new ones): tinyshakespeare.txt
(../shared/data, up to 14%), the plain-text pydoc pages of an allow-list of standard-library modules that import
without side effects (up to 55%), then docstrings read with ``ast`` from the other standard-library sources and
numpy's. Cut into ~4,000-character documents, each distinct document once, in a fixed shuffled order. Every
tokenizing run starts cold (fresh encoder processes).

- BPE training (8k byte-level): ``corpusforge.tokenizer.train_tokenizer`` vs the same trainer called directly.
- Unigram training: ours (HF ``tokenizers`` + canonical output) vs SentencePiece's unigram, time and bytes/token.
- Tokenizing: ``write_token_shards`` end to end (encode + EOT + Arrow shards + manifest), vs raw
  ``Tokenizer.encode_batch`` (no writing) and vs datatrove's ``DocumentTokenizer`` writing its own ``.ds``
  shards (documents unshuffled, so the two id streams are compared token for token).
- Peak memory of training (``TokenizerStage``) and of tokenizing (``TokensStage``) at 1× and 4× the corpus,
  each in a fresh process reading document shards.

    python benchmarks/tokenize.py            # ~8 MB of distinct text
    python benchmarks/tokenize.py --quick    # ~2 MB, under a minute
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the standard library's ``tokenize`` (which inspect and pydoc import): take its folder
# off the front of sys.path so ``import tokenize`` finds the standard module, and reach _harness from the end.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from _harness import parser, print_keyvals, print_table, ratio  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (VmHWM: unlike ru_maxrss it restarts at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Standard-library modules whose import has no side effects (no GUI, no network, no printing, no warnings).
MODULES = """os sys re json collections itertools functools pathlib typing string math random datetime textwrap
argparse logging subprocess shutil tempfile io csv hashlib heapq bisect enum dataclasses decimal fractions
statistics struct copy pprint inspect ast dis tokenize zipfile tarfile gzip bz2 lzma sqlite3 socket ssl email
html xml.etree.ElementTree urllib.parse urllib.request http.client http.server unittest doctest difflib calendar
time threading queue multiprocessing asyncio contextlib abc operator weakref types codecs locale gettext uuid
base64 binascii secrets hmac glob fnmatch configparser tomllib pickle shelve array numbers cmath traceback
warnings platform signal selectors mmap sched concurrent.futures zlib unicodedata graphlib ipaddress wave
colorsys imaplib smtplib ftplib poplib mailbox mimetypes quopri builtins email.message email.utils
email.headerregistry email.policy json.decoder json.encoder xml.dom.minidom xml.sax html.parser http.cookies
http.cookiejar urllib.robotparser urllib.error logging.handlers logging.config importlib importlib.metadata
importlib.resources importlib.abc importlib.util pkgutil zipimport runpy ctypes sysconfig opcode symtable token
keyword code codeop pdb bdb profile cProfile pstats timeit trace tracemalloc gc faulthandler filecmp fileinput
stat linecache netrc plistlib reprlib rlcompleter shlex socketserver xmlrpc.client xmlrpc.server
wsgiref.simple_server wsgiref.util wsgiref.headers zipapp compileall py_compile pyclbr modulefinder tabnanny
getopt optparse cmd pickletools copyreg dbm contextvars collections.abc concurrent.futures.process
multiprocessing.pool multiprocessing.shared_memory asyncio.streams asyncio.subprocess unittest.mock
email.mime.text sqlite3.dbapi2 ctypes.util errno select posixpath genericpath ntpath stringprep encodings
zoneinfo""".split()
DOC_CHARS = 4000
EOT = "<|endoftext|>"
# Share of the corpus each source may take at most (pydoc pages, then docstrings fill what is left).
SHARES = {"shakespeare": 0.14, "pydoc": 0.55, "docstrings": 1.0}


def pydoc_texts(max_chars: int | None = None) -> list[str]:
    """Plain-text pydoc pages of ``MODULES`` (each page once), until ``max_chars``."""
    import pydoc
    import warnings

    out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            if max_chars is not None and sum(map(len, out)) >= max_chars:
                break
            try:
                mod = importlib.import_module(name)
                out.append(pydoc.render_doc(mod, renderer=pydoc.plaintext))
            except Exception:  # noqa: BLE001 - a module missing on this Python is skipped
                continue
    return out


def docstring_texts(max_chars: int, skip_modules: set[str]) -> list[str]:
    """Docstrings read with ``ast`` (nothing imported) from the standard library's sources, then numpy's, ….

    One text per source file: its docstrings joined by blank lines. Standard-library modules that have a pydoc
    page in the corpus are skipped (their docstrings are in the page already); so are test suites.
    """
    import ast
    import sysconfig

    roots = [(Path(sysconfig.get_paths()["stdlib"]), "")]
    for name in ("numpy", "pyarrow", "datasets"):  # found, not imported
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            roots.append((Path(spec.origin).parent, name))
    skip_dirs = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "turtledemo", "tkinter"}
    out: list[str] = []
    total = 0
    for root, prefix in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if skip_dirs.intersection(rel.parts[:-1]):
                continue
            parts = [prefix, *rel.parts[:-1]] + ([] if rel.stem == "__init__" else [rel.stem])
            if ".".join(p for p in parts if p) in skip_modules:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            docs = [d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n))]
            if docs:
                out.append("\n\n".join(dict.fromkeys(docs)))
                total += len(out[-1])
                if total >= max_chars:
                    return out
    return out


def shakespeare_texts(max_chars: int) -> list[str]:
    """tinyshakespeare.txt (../shared/data), its first ``max_chars`` characters cut at blank lines."""
    path = _HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
    if not path.is_file():
        print(f"note: {path} not found, the corpus has no Shakespeare", flush=True)
        return []
    text = path.read_text(encoding="utf-8")[:max_chars]
    return [text[: text.rfind("\n\n") + 1 or len(text)]]


def corpus_texts(target_chars: int) -> tuple[list[str], dict[str, int]]:
    """Distinct source texts, about ``target_chars`` in all: Shakespeare, pydoc pages, then docstrings."""
    shakespeare = shakespeare_texts(int(target_chars * SHARES["shakespeare"]))
    pages = pydoc_texts(int(target_chars * SHARES["pydoc"]))
    have = sum(map(len, shakespeare)) + sum(map(len, pages))
    docstrings = docstring_texts(max(int(target_chars * 1.05) - have, 0), set(MODULES))
    sizes = {"shakespeare": shakespeare, "pydoc": pages, "docstrings": docstrings}
    return shakespeare + pages + docstrings, {k: sum(map(len, v)) for k, v in sizes.items()}


def base_docs(texts: list[str]) -> list[str]:
    """Each text cut into ~4,000-character documents (at a line end when there is one), each distinct once."""
    docs: list[str] = []
    for t in texts:
        i = 0
        while i < len(t):
            j = min(i + DOC_CHARS, len(t))
            if j < len(t):
                cut = t.rfind("\n", i + DOC_CHARS // 2, j)
                j = cut + 1 if cut > 0 else j
            docs.append(t[i:j])
            i = j
    return list(dict.fromkeys(docs))


def make_docs(texts: list[str], target_chars: int) -> list[str]:
    """The distinct documents of ``texts`` in a fixed shuffled order, up to ``target_chars``: no repetition."""
    import random

    docs = base_docs(texts)
    random.Random(0).shuffle(docs)
    out, n = [], 0
    for d in docs:
        if n >= target_chars:
            break
        out.append(d)
        n += len(d)
    return out


def word_stats(docs: list[str]) -> dict[str, float]:
    """How Zipfian the text is: words (GPT-2 style pieces), distinct ones, share of the top 1,000, hapaxes."""
    import re
    from collections import Counter

    counts = Counter(re.findall(r" ?\w+| ?[^\s\w]+|\s+", "".join(docs)))
    total = sum(counts.values())
    top = sum(c for _, c in counts.most_common(1000))
    return {
        "words": total,
        "distinct": len(counts),
        "top1k_share": top / total,
        "hapax": sum(1 for c in counts.values() if c == 1),
    }


def write_doc_shards(docs: list[str], folder: Path) -> None:
    from corpusforge.document import Document
    from corpusforge.storage import ShardWriter, write_manifest

    with ShardWriter(folder, "00000", max_bytes=2 << 20) as w:  # rotated, as stage outputs are
        for i, t in enumerate(docs):
            w.write(Document(id=f"d{i:07d}", text=t, source=f"pydoc{i % 3}", url=f"https://docs.python.org/{i}"))
    write_manifest(folder, w.files, config={})


# --------------------------------------------------------------------------------------------------- training
def bench_bpe_training(sample: list[str], vocab: int) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from corpusforge.tokens.tokenizer import train_tokenizer

    def raw() -> Tokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            min_frequency=2,
            special_tokens=[EOT, "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(sample, trainer=trainer)
        return tok

    t_peer, best_peer = float("inf"), None
    t_ours, best_ours = float("inf"), None
    for _ in range(2):  # interleaved, best of 2: the machine is shared
        t0 = time.perf_counter()
        best_ours = train_tokenizer(sample, kind="bpe", vocab_size=vocab)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        best_peer = raw()
        t_peer = min(t_peer, time.perf_counter() - t0)
    same = best_ours.to_str() == best_peer.to_str()
    return {"ours_s": t_ours, "peer_s": t_peer, "same_vocab": same, "tok": best_ours}


def bench_unigram(sample: list[str], vocab: int, work: Path) -> dict:
    import sentencepiece as spm

    from corpusforge.tokens.tokenizer import train_tokenizer

    text = "\n".join(sample)
    nbytes = len(text.encode("utf-8"))
    t0 = time.perf_counter()
    ours = train_tokenizer(sample, kind="unigram", vocab_size=vocab)
    t_ours = time.perf_counter() - t0
    ours_tokens = sum(len(e.ids) for e in ours.encode_batch(sample, add_special_tokens=False))
    inp = work / "spm_input.txt"
    inp.write_text(text)
    t0 = time.perf_counter()
    spm.SentencePieceTrainer.train(
        input=str(inp),
        model_prefix=str(work / "spm"),
        model_type="unigram",
        vocab_size=vocab,
        character_coverage=1.0,
        num_threads=os.cpu_count() or 1,
        hard_vocab_limit=False,
        minloglevel=2,
        # Lossless like ours: no NFKC, whitespace runs kept (SentencePiece's defaults drop extra spaces,
        # which flatters its bytes/token on indented text).
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
    )
    t_peer = time.perf_counter() - t0
    sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    peer_tokens = sum(len(x) for x in sp.encode(sample))
    return {
        "ours_s": t_ours,
        "peer_s": t_peer,
        "ours_bpt": nbytes / ours_tokens,
        "peer_bpt": nbytes / peer_tokens,
        "ours_vocab": ours.get_vocab_size(),
        "peer_vocab": sp.get_piece_size(),
    }


# --------------------------------------------------------------------------------------------------- tokenizing
def bench_tokenize(docs: list[str], tok_path: Path, work: Path, workers: int, rounds: int) -> dict:
    """Best of ``rounds`` interleaved runs of each (the machine is shared); every run starts cold."""
    import numpy as np
    from datatrove.data import Document as DtDocument
    from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer
    from tokenizers import Tokenizer

    from corpusforge.document import Document
    from corpusforge.tokens.read import token_arrays
    from corpusforge.tokens.stage import write_token_shards

    tok = Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id(EOT)
    ours_docs = [Document(id=f"d{i:07d}", text=t) for i, t in enumerate(docs)]
    dt_docs = [DtDocument(text=t, id=f"d{i:07d}") for i, t in enumerate(docs)]
    best = {"raw": float("inf"), "ours": float("inf"), "dt": float("inf")}
    for _ in range(rounds):
        t0 = time.perf_counter()
        encs = tok.encode_batch(docs, add_special_tokens=False)
        best["raw"] = min(best["raw"], time.perf_counter() - t0)

        out = work / "ours_tokens"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        # Both sides get the tokenizer already loaded (datatrove's is loaded before its clock starts, below);
        # building our encoder from it, seeding its table and starting the workers are timed.
        manifest = write_token_shards(ours_docs, tok, out, val_fraction=0.0, workers=workers)
        best["ours"] = min(best["ours"], time.perf_counter() - t0)

        dt_out = work / "datatrove_tokens"
        shutil.rmtree(dt_out, ignore_errors=True)
        step = DocumentTokenizer(
            str(dt_out),
            tokenizer_name_or_path=str(tok_path),
            eos_token=EOT,
            shuffle_documents=False,
            save_final_metadata=False,
        )
        _ = step.tokenizer  # loading the tokenizer file is not tokenizing
        t0 = time.perf_counter()
        step.run(iter(dt_docs), rank=0, world_size=1)
        best["dt"] = min(best["dt"], time.perf_counter() - t0)

    ref = np.concatenate([np.append(np.asarray(e.ids, dtype=np.uint16), np.uint16(eot)) for e in encs])
    ours_flat = np.concatenate(token_arrays(out, "train"))
    dt_flat = np.concatenate([np.fromfile(p, dtype=np.uint16) for p in sorted(dt_out.rglob("*.ds"))])
    same = bool(np.array_equal(ours_flat, ref) and np.array_equal(dt_flat, ref))
    return {
        "tokens": len(ref),
        "raw_s": best["raw"],
        "ours_s": best["ours"],
        "dt_s": best["dt"],
        "same": same,
        "counters": manifest["steps"][0]["counters"],
    }


# --------------------------------------------------------------------------------------------------- memory
def child_memory(mode: str, shards: Path, out: Path, tok_path: str, max_chars: int) -> None:
    """Run one stage's task on document shards in this (fresh) process and print its peak RSS in MiB."""
    from corpusforge.stage import StageContext
    from corpusforge.tokens.stage import TokenizerStage, TokensStage

    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(run_dir=out.parent, out_dir=out, in_dir=shards, stage_name=mode)
    base = peak_rss_mb()
    if mode == "train":
        TokenizerStage(vocab_size=8192, max_chars=max_chars).run_task(ctx, 0)
    else:
        TokensStage(tokenizer=tok_path, tasks=1).run_task(ctx, 0)
    print(json.dumps({"peak_mb": peak_rss_mb(), "base_mb": base}))


def bench_memory(docs: list[str], tok_path: Path, work: Path, max_chars: int) -> list[dict]:
    rows = []
    for mult in (1, 4):
        shards = work / f"mem_docs_x{mult}"
        write_doc_shards(docs * mult, shards)
        for mode in ("train", "tokens"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                str(shards),
                str(work / f"mem_{mode}_x{mult}"),
                str(tok_path),
                str(max_chars),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"memory child failed:\n{proc.stderr[-2000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"mode": mode, "mult": mult, "chars": len(docs) * mult * DOC_CHARS, **res})
    return rows


# --------------------------------------------------------------------------------------------------- main
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, mode, shards, out, tok_path, max_chars = sys.argv
        child_memory(mode, Path(shards), Path(out), tok_path, int(max_chars))
        return
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=None, help="text size to tokenize, in MB (default 8, quick 2)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoder processes (ours)")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best of each is kept")
    args = p.parse_args()
    mb = args.mb or (2.0 if args.quick else 8.0)
    work = Path(tempfile.mkdtemp(prefix="cf-bench-tokenize-"))
    try:
        t0 = time.perf_counter()
        texts, sizes = corpus_texts(int(mb * 1e6))
        docs = make_docs(texts, int(mb * 1e6))
        ws = word_stats(docs)
        print(
            f"text: {len(docs)} distinct documents, {sum(map(len, docs)) / 1e6:.2f} M chars, none repeated "
            f"(sources, M chars: " + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sizes.items()) + "); "
            f"{ws['words']:,} words, {ws['distinct']:,} distinct, top 1,000 cover {ws['top1k_share']:.0%}, "
            f"{ws['hapax']:,} seen once ({time.perf_counter() - t0:.1f} s to make); {os.cpu_count()} CPUs",
            flush=True,
        )

        # Training sample: the first documents of the (shuffled) corpus, 1.5 M chars (--quick) or 2 M.
        sample, n = [], 0
        for d in docs:
            if n >= (1_500_000 if args.quick else 2_000_000):
                break
            sample.append(d)
            n += len(d)
        bpe = bench_bpe_training(sample, args.vocab)
        tok_path = work / "tokenizer.json"
        tok_path.write_text(bpe["tok"].to_str(pretty=True))
        uni = bench_unigram(sample[: 250 if args.quick else 600], args.vocab, work)
        enc = bench_tokenize(docs, tok_path, work, args.workers, rounds=args.rounds)
        mem = bench_memory(docs[: 200 if args.quick else 500], tok_path, work, max_chars=400_000)

        n = enc["tokens"]
        tps = lambda s: n / s  # noqa: E731
        rows = [
            {
                "what": "BPE training 8k, s",
                "ours": bpe["ours_s"],
                "peer": bpe["peer_s"],
                "ratio": ratio(bpe["ours_s"], bpe["peer_s"]),
                "peer is": "tokenizers BpeTrainer direct",
            },
            {
                "what": "Unigram training, s",
                "ours": uni["ours_s"],
                "peer": uni["peer_s"],
                "ratio": ratio(uni["ours_s"], uni["peer_s"]),
                "peer is": "SentencePiece unigram",
            },
            {
                "what": f"Unigram bytes/token (vocab {uni['ours_vocab']} vs {uni['peer_vocab']})",
                "ours": uni["ours_bpt"],
                "peer": uni["peer_bpt"],
                "ratio": ratio(uni["ours_bpt"], uni["peer_bpt"]),
                "peer is": "SentencePiece unigram",
            },
            {
                "what": "tokenize→shards, tokens/s",
                "ours": tps(enc["ours_s"]),
                "peer": tps(enc["dt_s"]),
                "ratio": ratio(enc["dt_s"], enc["ours_s"]),
                "peer is": "datatrove DocumentTokenizer",
            },
            {
                "what": "tokenize→shards, tokens/s",
                "ours": tps(enc["ours_s"]),
                "peer": tps(enc["raw_s"]),
                "ratio": ratio(enc["raw_s"], enc["ours_s"]),
                "peer is": "encode_batch, no writing",
            },
        ]
        print_table(rows, title=f"{n:,} tokens, vocab {args.vocab}, ours with {args.workers} encoder processes")
        mem_rows = [
            {
                "what": f"peak RSS MiB, {r['mode']} stage",
                "corpus": f"x{r['mult']} ({r['chars'] / 1e6:.1f} M chars)",
                "peak_mb": r["peak_mb"],
                "before_mb": r["base_mb"],
            }
            for r in mem
        ]
        print_table(mem_rows, title="memory as the corpus grows (fresh process each; training budget 0.4 M chars)")
        print(f"\nencoder counters: {enc['counters']}; BPE vocab identical to raw tokenizers: {bpe['same_vocab']}")
        print_keyvals(
            speedup_vs_datatrove=enc["dt_s"] / enc["ours_s"],
            speedup_vs_encode_batch=enc["raw_s"] / enc["ours_s"],
            same_ids=enc["same"],
            tokens=n,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
