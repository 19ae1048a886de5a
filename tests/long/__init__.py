"""Long tests: ``bash scripts/test.sh --long`` (HVFS_LONG=1). Skipped in the normal run."""
