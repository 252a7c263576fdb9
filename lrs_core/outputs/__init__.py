"""Answers as map layers and pictures, one module per concept.

``geometry`` (footprints in pixels / scene CRS / EPSG:4326), ``geoparquet``, ``geojson``,
``heatmaps`` (colour ramp, COG), ``overlays`` (annotated PNGs) and ``parts`` (the append-only batch
output folder and its readers). See docs/outputs.md.
"""
