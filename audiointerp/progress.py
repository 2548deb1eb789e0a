"""Progress bars that stay readable when output is redirected to a log (a SLURM job, ``> run.log``).

On a terminal this is tqdm as usual. Elsewhere a bar redraws itself with carriage returns, which a
log file keeps as one ever-growing line; there each refresh becomes its own line instead, at most
one per :data:`LOG_INTERVAL_S` seconds per bar, in ASCII. Notebooks keep tqdm's widgets.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

#: Seconds between two progress lines of one bar in a log.
LOG_INTERVAL_S = 30.0


class _Lines:
    """A stream wrapper that turns tqdm's in-place redraws into newline-terminated lines."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()  # the padding and the clearing of a closed bar too
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A bar for a log: a new postfix (a loss, a score) waits for the next timed refresh instead of
    writing a line of its own at once."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``, as lines when stderr is not a terminal (see the module)."""
    stream = sys.stderr
    if not stream.isatty() and "ipykernel" not in sys.modules:
        kwargs = {"mininterval": LOG_INTERVAL_S, "ascii": True, **kwargs, "file": _Lines(stream)}
        return _LogBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
