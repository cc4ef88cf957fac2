"""``corpusforge ablate --demo`` timed as a user runs it: raw vs cleaned vs cleaned+dedup on the embedded site.

No curation tool (datatrove, NeMo Curator, dolma) runs ablations for its user, so there is no peer to time in
the same run: the figures are the demo's wall time (the goal: at most 15 minutes on 2 CPU cores), its table,
and whether the verdicts stand above the seed spread. The variants share the crawl; each trains the demo's GPT
(2 layers, width 128, block 128) on the same number of tokens with the same tokenizer, per seed.

    python benchmarks/ablate.py            # the --demo defaults (800,000 training tokens, 2 seeds)
    python benchmarks/ablate.py --quick    # 60,000 tokens: only the shape of the result, ~2 minutes

Last line: ``demo_wall_s=<s> cleaned_vs_raw=<better|worse|same> spread_bpb=<max seed spread>``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/tokenize.py shadows tokenize
sys.path.insert(0, str(_HERE.parent))

from benchmarks._harness import ROOT, parser, print_keyvals, print_table  # noqa: E402

SHORT = {"better": "better", "worse": "worse", "no measurable difference": "same"}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    tmp = None if args.workdir else Path(tempfile.mkdtemp(prefix="cf-ablate-"))
    wd = args.workdir or (tmp / "ablate-demo")  # type: ignore[operator]
    cmd = [
        sys.executable,
        "-m",
        "corpusforge.cli",
        "ablate",
        "--demo",
        "--workdir",
        str(wd),
        "--seeds",
        str(args.seeds),
    ]
    if args.quick:
        cmd += ["--tokens", "60000"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        sys.exit(f"corpusforge ablate --demo failed with exit {out.returncode}")
    report = json.loads((wd / "ablation.json").read_text())
    rows = []
    for r in report["variants"]:
        d = r["decontamination"]
        rows.append(
            {
                "variant": r["name"],
                "bits/byte": f"{r['bpb_mean']:.4f} ± {r['bpb_spread']:.4f}",
                "Δ vs raw": "-" if r["verdict"] is None else f"{r['diff_mean']:+.4f} ± {r['diff_spread']:.4f}",
                "verdict": r["verdict"] or "(base)",
                "documents": r["documents"],
                "corpus tokens": r["corpus_tokens"],
                "trained tokens": r["training_tokens"],
                "decontaminated": d["removed_exact"] + d["removed_near"],
            }
        )
    print_table(rows, title=f"corpusforge ablate --demo: held-out bits per byte, seeds {report['seeds']}")
    print(f"wall time {wall:.0f} s (goal: at most 900 s on 2 CPU cores)")
    cleaned = next(r for r in report["variants"] if r["name"] == "cleaned")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    print_keyvals(
        demo_wall_s=round(wall),
        cleaned_vs_raw=SHORT.get(cleaned["verdict"], cleaned["verdict"]),
        spread_bpb=round(max(r["bpb_spread"] for r in report["variants"]), 4),
    )


if __name__ == "__main__":
    main()
