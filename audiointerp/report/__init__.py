"""From runs to the paper: ``python -m audiointerp.report PATH [PATH ...]`` gathers the CSVs and
``run.json`` that runs wrote (it never re-runs anything) into ``report/``: one tidy table of every
clip and mask, the reference's tables with bootstrap confidence intervals, and an HTML page with
figures and a listening gallery. It also runs at the end of every multirun (a Hydra callback).
"""

from audiointerp.report.build import write_report

__all__ = ["write_report"]
