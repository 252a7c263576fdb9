"""dip package of lrs_core."""
