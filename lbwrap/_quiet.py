"""Import gymnasium without the stderr notice that gymnasium-robotics 1.2.2 prints at import.

gymnasium loads its plugins (gymnasium-robotics, a safety-gymnasium dependency) on import, and
that plugin prints a notice about Adroit hand envs to stderr. lbwrap never uses those envs.
"""

from __future__ import annotations

import contextlib
import io
import sys


def import_gymnasium_quietly() -> None:
    """Import gymnasium once with stderr captured; a no-op if it is already imported."""
    if "gymnasium" in sys.modules:
        return
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import gymnasium  # noqa: F401
    notice = "reward functions were updated in v1.2.1"
    leftover = "\n".join(l for l in captured.getvalue().splitlines() if notice not in l)
    if leftover.strip():  # anything else is not ours to hide
        sys.stderr.write(leftover + "\n")
