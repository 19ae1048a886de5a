"""tests/test_fuzz.py at length: the same state machine (two mounts, a raw client, faults),
many more examples and longer runs, with shrinking (a failure comes back minimal).

HVFS_FUZZ_EXAMPLES (default 50) examples of up to HVFS_FUZZ_STEPS (default 50)
steps: about 8 minutes on 2 cores. derandomize: the same examples every run
for the same knobs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from ..test_fuzz import fuzz_rig, run_fuzz
from .common import long_only, table

pytestmark = long_only

EXAMPLES = int(os.environ.get("HVFS_FUZZ_EXAMPLES", "50"))
STEPS = int(os.environ.get("HVFS_FUZZ_STEPS", "50"))

LONG_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@pytest.mark.timeout(3600)
def test_fuzz_long(tmp_path: Path) -> None:
    with fuzz_rig(tmp_path) as rig:
        try:
            seconds = run_fuzz(rig, LONG_SETTINGS)
        finally:
            table("Fuzz with a model: steps by outcome",
                  ["step", "count"], sorted(rig.tally.items()),
                  [f"{EXAMPLES} examples of up to {STEPS} steps"])
    print(f"fuzz long: {seconds:.0f}s")
