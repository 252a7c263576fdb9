"""The model layer: stock Hugging Face VLMs taken apart for coarse-to-fine token pruning.

Modules (import them directly; this package imports nothing so ``import lrs_core`` stays light):

* :mod:`~lrs_core.models.config` -- :class:`VlmConfig`, the project's model config.
* :mod:`~lrs_core.models.vlm` -- :class:`VisionLanguageModel` and :class:`RfmLayers`.
* :mod:`~lrs_core.models.projector` -- the ``mlp2x_gelu`` projector.
* :mod:`~lrs_core.models.prompt` -- chat templates and LLaVA-style tokenization.
* :mod:`~lrs_core.models.layout` -- the LLM input sequence as a data structure.
* :mod:`~lrs_core.models.loading` -- save/load, one module per on-disk layout (project format, the
  paper's release, llava-hf, Hugging Face Qwen-VL) and :mod:`~lrs_core.models.loading.auto`, the
  entry point that detects the layout.
* :mod:`~lrs_core.models.families` -- stock Hugging Face families (LLaVA, Qwen-VL) for the engine.
* :mod:`~lrs_core.models.tiny` -- tiny random models and an offline tokenizer.
* :mod:`~lrs_core.models.attention_rows`, :mod:`~lrs_core.models.generation`,
  :mod:`~lrs_core.models.flops` -- exact attention rows, pruned generation, analytic FLOPs.

See ``docs/models.md``.
"""
