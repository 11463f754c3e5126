"""Run-wide settings read from the environment, in one place.

``FL_LAB_FAST=1`` switches every notebook and workflow to its fast mode: small data and
short runs that finish in minutes on two CPU cores (CI uses it). Unset, empty or ``0``
means full size.
"""

from __future__ import annotations

import os

FAST_ENV = "FL_LAB_FAST"


def fast_mode() -> bool:
    """True when ``FL_LAB_FAST`` is set to anything but "", "0", "false", "no" or "off"."""
    value = os.environ.get(FAST_ENV, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")
