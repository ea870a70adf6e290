"""Progress bars on stderr (tqdm), silenced with ``JAXLAB_NO_PROGRESS=1`` (tests, CI logs)."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable=None, *, total=None, desc=None, initial=0, **kw):
    """A tqdm bar on stderr; disabled when JAXLAB_NO_PROGRESS is set or stderr is not a TTY in CI."""
    disable = kw.pop("disable", False)
    disable = bool(disable) or bool(os.environ.get("JAXLAB_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, initial=initial, file=sys.stderr,
                disable=disable, dynamic_ncols=True, leave=True, **kw)
