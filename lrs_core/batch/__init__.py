"""batch package of lrs_core."""
