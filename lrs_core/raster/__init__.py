"""raster package of lrs_core."""
