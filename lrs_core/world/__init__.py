"""A miniature remote-sensing world: scenes, DOTA annotations, questions and a trained model.

Modules: :mod:`.vocabulary` (the fixed words), :mod:`.generate` (scene content from a seed),
:mod:`.render` (pixels and GeoTIFFs), :mod:`.annotations` (DOTA read/write), :mod:`.qa`
(annotations -> LRS-VQA questions), :mod:`.make` (``lrs world make``), :mod:`.train`
(``lrs world train``) and :mod:`.weights` (the committed trained model, ``--model world``).
"""
