"""``python -m pyquant`` (or the ``pyquant`` console script): ``info``, ``report``, ``compress``, ``generate``.
See :mod:`pyquant.cli`."""
from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
