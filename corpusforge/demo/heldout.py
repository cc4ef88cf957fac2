"""The held-out set of ``corpusforge ablate --demo``: documentation pages of standard-library modules the demo
site does not serve, rendered by ``pydoc`` exactly as the site renders its own (same template, same links).

Like the site, the text comes from the Python installation, so nothing is downloaded or stored: the package
ships the module list and the renderer. The ablation extracts the pages' main text with the same extractor as
the demo's clean stage, so the held-out set is the clean text of pages of the same kind as the corpus.
"""

from __future__ import annotations

from pathlib import Path

from corpusforge.demo.site import MODULES, _render_module, _wrap

# Pure library modules, no side effects on import, none of them in ``site.MODULES``: 29 pages, ~29,000 words,
# ~64,000 tokens under the demo's tokenizer (an evaluation of every token takes ~3 s on 2 CPU cores).
HELDOUT_MODULES = (
    "bdb code codeop dis fileinput mimetypes netrc pickle pickletools platform plistlib pstats pyclbr "
    "quopri runpy selectors shelve stat symtable sysconfig tabnanny timeit token trace wave zipapp tomllib "
    "posixpath copyreg"
).split()

assert not set(HELDOUT_MODULES) & set(MODULES), "a held-out page must not be one the demo site serves"


def write_heldout_pages(folder: Path) -> Path:
    """One HTML file per held-out module in ``folder`` (rewritten only when its bytes change); the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sidebar = "".join(f'<li><a href="/lib/{m}.html">{m}</a></li>' for m in MODULES)
    for m in HELDOUT_MODULES:
        data = _wrap(f"Python: {m}", _render_module(m), sidebar)
        path = folder / f"{m}.html"
        if not path.is_file() or path.read_bytes() != data:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
    return folder
