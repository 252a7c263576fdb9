"""focus package of lrs_core."""
