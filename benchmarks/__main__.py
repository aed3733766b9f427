"""``python -m benchmarks`` -- see benchmarks/README.md and ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.harness import main
else:
    from .harness import main

if __name__ == "__main__":
    raise SystemExit(main())
