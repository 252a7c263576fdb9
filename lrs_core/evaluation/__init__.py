"""Benchmarks: LRS-VQA and MME-RealWorld-RS readers, reference scorers, focus metrics, synth data.

Modules: :mod:`~lrs_core.evaluation.lrs_vqa` (question files, image paths, prediction records),
:mod:`~lrs_core.evaluation.mme` (MME-RealWorld-RS), :mod:`~lrs_core.evaluation.scoring` (spec §7.3),
:mod:`~lrs_core.evaluation.wordnet` (offline WordNet 3.0), :mod:`~lrs_core.evaluation.focus_metrics`
(where the engine looked), :mod:`~lrs_core.evaluation.synth` (an offline LRS-VQA-format set),
:mod:`~lrs_core.evaluation.runner` (answer a benchmark: resumable, chunked),
:mod:`~lrs_core.evaluation.merge` (join chunk files) and :mod:`~lrs_core.evaluation.report` (score
a finished run).
"""
