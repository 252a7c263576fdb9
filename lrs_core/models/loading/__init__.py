"""Loading models, one module per on-disk layout, and one entry point that detects the layout.

* :mod:`~lrs_core.models.loading.auto` -- :func:`load_model`, :func:`detect_layout`,
  :func:`convert_checkpoint`: the entry point for any model directory.
* :mod:`~lrs_core.models.loading.project` -- the project format (:func:`save_model`).
* :mod:`~lrs_core.models.loading.paper` -- the paper's released checkpoints (LLaVA layout).
* :mod:`~lrs_core.models.loading.llava_hf` -- llava-hf LLaVA-1.5 / LLaVA-NeXT.
* Hugging Face Qwen-VL directories load through :mod:`lrs_core.models.families`.
* :mod:`~lrs_core.models.loading.loaded` -- :class:`LoadedModel` and the shared build-and-assign.
* :mod:`~lrs_core.models.loading.files` -- file names and readers (JSON, safetensors, tokenizer).

This package imports nothing itself (import the modules), so low-level modules may use
:mod:`~lrs_core.models.loading.files` without loading the layouts.
"""
