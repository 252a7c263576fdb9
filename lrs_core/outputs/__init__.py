"""outputs package of lrs_core."""
