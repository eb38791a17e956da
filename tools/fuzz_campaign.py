"""The fuzz campaign: every case of every chosen family, each distinct finding kept (docs/reliability.md).

    python tools/fuzz_campaign.py --cases 5000 --out results/fuzz/campaign.json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz.core import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
