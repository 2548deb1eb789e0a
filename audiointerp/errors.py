"""Errors a user can fix. The CLI prints them as one line instead of a traceback."""

from __future__ import annotations

from typing import Any


class AudioInterpError(Exception):
    """Bad input or configuration; the message names the file or option and what was expected."""


def expect_int(option: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``, else an AudioInterpError naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise AudioInterpError(f"{option}: expected {what}, got {value!r}")
    return value


def build(node: Any, **kwargs: Any) -> Any:
    """Hydra's ``instantiate``, letting our own one-line errors through instead of Hydra's wrapper.

    Hydra wraps whatever a ``_target_``'s constructor raises in a multi-line InstantiationException;
    an AudioInterpError (a bad ``data.root``, say) should reach the user as the line it is.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, AudioInterpError):
            raise error.__cause__ from None
        raise
