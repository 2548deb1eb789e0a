"""Progress bars in a log: one line per refresh, no carriage returns (audiointerp/progress.py)."""

import subprocess
import sys

SCRIPT = """
import time
from audiointerp import progress as p
p.LOG_INTERVAL_S = 0.05
for _ in p.progress(range(6), desc="clips"):
    time.sleep(0.03)
for _ in p.progress(range(3), desc="inner", leave=False):
    time.sleep(0.03)
p.LOG_INTERVAL_S = 60
with p.progress(range(20), desc="epoch", leave=True) as bar:
    for _ in bar:
        bar.set_postfix(loss=1.0)  # every batch: no line of its own in a log
"""


def test_redirected_bars_are_lines():
    """stderr to a pipe (a log file, a SLURM job): every refresh its own line, the last one complete,
    no blank lines, and a postfix set on every step waits for the next timed refresh."""
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    clip_lines = [line for line in lines if line.startswith("clips")]
    assert len(clip_lines) >= 2, lines  # refreshes while running, not one final redraw
    assert "6/6" in clip_lines[-1]
    assert all(line.strip() for line in lines)  # the leave=False bar's clearing is no blank line
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert len(epoch_lines) <= 2 and "20/20" in epoch_lines[-1], epoch_lines
