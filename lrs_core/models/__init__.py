"""The model layer: stock Hugging Face VLMs taken apart for coarse-to-fine token pruning.

Modules (import them directly; this package imports nothing so ``import lrs_core`` stays light):

* :mod:`~lrs_core.models.config` -- :class:`VlmConfig`, the project's model config.
* :mod:`~lrs_core.models.vlm` -- :class:`VisionLanguageModel` and :class:`RfmLayers`.
* :mod:`~lrs_core.models.projector` -- the ``mlp2x_gelu`` projector.
* :mod:`~lrs_core.models.prompt` -- chat templates and LLaVA-style tokenization.
* :mod:`~lrs_core.models.layout` -- the LLM input sequence as a data structure.
* :mod:`~lrs_core.models.io` -- save/load (project format; foreign layouts auto-detected).
* :mod:`~lrs_core.models.convert` -- the paper's release and llava-hf layouts.
* :mod:`~lrs_core.models.tiny` -- tiny random models and an offline tokenizer.
* :mod:`~lrs_core.models.attention_rows`, :mod:`~lrs_core.models.generation`,
  :mod:`~lrs_core.models.flops` -- exact attention rows, pruned generation, analytic FLOPs.

See ``docs/models.md``.
"""
