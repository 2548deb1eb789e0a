"""Memory over a long run: RSS of a real `python -m audiointerp.run` process as its clips are explained.

Runs the CLI on the embedded synthetic data with a tiny model (400 test clips by default) and reads
the process's resident set size from /proc while it works, each time another batch of results lands
in the run's ``.partial/`` folder. A flat column means memory does not grow with the number of clips
(per-clip results go to disk as the run goes, not into a list in memory).

    python scripts/bench_memory.py                 # 400 clips, saliency
    python scripts/bench_memory.py --clips-per-class 25 --explainer gradcam
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-class", type=int, default=50, help="test clips per class (8 classes)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--explainer", default="saliency")
    parser.add_argument("--every", type=int, default=50, help="report RSS every this many clips")
    args = parser.parse_args()
    n_clips = 8 * args.clips_per_class

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        command = [sys.executable, "-m", "audiointerp.run", "experiment=smoke", f"explainer={args.explainer}",
                   f"data.clips_per_class.test={args.clips_per_class}", f"batch_size={args.batch_size}",
                   "n_examples=0", f"hydra.run.dir={run_dir}"]
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rows, next_mark, peak, started = [], args.every, 0.0, time.perf_counter()
        while process.poll() is None:
            rss = rss_mib(process.pid)
            if rss is not None:
                peak = max(peak, rss)
                done = min(len(list((run_dir / ".partial").glob("batch_*.pt"))) * args.batch_size, n_clips)
                while done >= next_mark and next_mark <= n_clips:
                    rows.append((next_mark, done, rss, time.perf_counter() - started))
                    next_mark += args.every
            time.sleep(0.1)
        if process.returncode != 0:
            sys.exit(f"the run failed:\n{process.stderr.read()[-3000:]}")

    print(f"RSS of `python -m audiointerp.run` over {n_clips} synthetic clips "
          f"(experiment=smoke: Cnn14 width 1/16; explainer={args.explainer}, batch_size={args.batch_size})")
    print("| clips explained | RSS (MiB) | seconds since start |")
    print("| --- | --- | --- |")
    for mark, done, rss, seconds in rows:
        print(f"| {mark} ({done} done when read) | {rss:.0f} | {seconds:.0f} |")
    print(f"peak RSS over the whole run, writing the results included: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
