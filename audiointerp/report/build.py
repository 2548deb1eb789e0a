"""Write a report folder: gather, tabulate, draw, and page, into a temporary folder renamed at the end."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from audiointerp.report.collect import find_runs, label_settings, per_clip_table
from audiointerp.report.page import GALLERY_MASKS, figures, gallery, index_html
from audiointerp.report.tables import build_tables, to_frame, to_latex, to_markdown
from audiointerp.report.trust import trust_tables

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


def write_report(paths: list[Path], out: Path, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 gallery_masks: tuple[str, ...] = GALLERY_MASKS) -> Path:
    """Gather every run under ``paths`` into ``out`` (replacing it whole, never half-written).

    Writes ``results.csv`` (one row per run x clip x mask), ``runs.csv`` (every run found and its
    status), ``tables/<kind>/<name>.{md,tex,csv}``, ``figures/``, ``gallery/`` and ``index.html``.
    Run names are paths relative to ``out``'s parent, so the same runs give the same bytes.

    Returns:
        ``out / "index.html"``.
    """
    out = Path(out)
    runs = find_runs([Path(p) for p in paths], base=out.parent)
    label_settings(runs)  # every setting runs differ in but the seed: named, never pooled over
    results = per_clip_table(runs)
    tables = build_tables(results, resamples=resamples, seed=seed) + trust_tables(results, resamples=resamples, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        results.to_csv(staging / "results.csv", index=False)
        pd.DataFrame([{"run": r.name, "status": r.status, **{k: v for k, v in r.settings.items() if k != "class_names"}}
                      for r in runs], dtype=object).to_csv(staging / "runs.csv", index=False)
        table_files = {}
        for index, table in enumerate(tables):
            folder = staging / "tables" / table.kind
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{table.name}.md").write_text(to_markdown(table))
            (folder / f"{table.name}.tex").write_text(to_latex(table))
            to_frame(table).to_csv(folder / f"{table.name}.csv", index=False)
            table_files[index] = {kind: f"tables/{table.kind}/{table.name}.{kind}" for kind in ("md", "tex", "csv")}
        figure_list = figures(results, staging)
        entries = gallery(runs, results, staging, gallery_masks)
        (staging / "index.html").write_text(index_html(runs, tables, table_files, figure_list, entries, len(results)))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out / "index.html"
