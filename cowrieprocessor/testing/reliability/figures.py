"""What the reliability tests measured, published; and the seed of their random choices."""

from __future__ import annotations

import json
import os
import random
from typing import Any

FIGURES_ENV = "COWRIE_RELIABILITY_FIGURES"
SEED_ENV = "COWRIE_RELIABILITY_SEED"
SEED = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(10**9))


def record(test: str, **figures: Any) -> None:
    """Publish one test's measured figures: printed, and appended to $COWRIE_RELIABILITY_FIGURES."""
    line = json.dumps({"test": test, **figures}, sort_keys=True, default=str)
    print(line)
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
