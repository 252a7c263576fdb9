"""The RFM distillation loop: plain PyTorch, gradient accumulation, exact resume after a kill.

Output folder::

    OUT/metrics.jsonl                      one JSON line per logged step (see :func:`train_records`)
    OUT/checkpoints/step-XXXXXX/           every ``ckpt_interval`` steps and at the last step
        trainable.safetensors              the trainable parameters (names as in the model)
        optimizer.safetensors              AdamW moments and step counters, keyed state.<i>.<name>
        rng.safetensors                    torch CPU (and CUDA) generator states
        state.json                         step, data position, scheduler, config, param groups
    OUT/model/                             the trained model in the project format (save_model)
    OUT/train_result.json                  the final metrics

A checkpoint folder is written under a temporary name and renamed, so a folder named ``step-...``
is always complete. Resuming loads the newest one, truncates ``metrics.jsonl`` to the lines at or
before its step and continues with the same data order (a pure function of the seed and the
position), optimizer, schedule and generator states: the run ends with the same weights, bit for
bit on the same machine, as one that was never interrupted (a test checks this on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lrs_core.distill.config import DistillConfig
from lrs_core.distill.data import DistillDataset, Record, build_dataset, read_records, subset
from lrs_core.distill.loss import (
    DistillBatch,
    batch_topk_recall,
    distill_loss,
    distilled_pairs,
    image_slice,
    pair_logits,
)
from lrs_core.distill.sampler import BucketSampler, split_held_out
from lrs_core.errors import ConfigError
from lrs_core.models.loading.auto import load_model
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.models.runtime import resolve_device
from lrs_core.models.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
SCENES_DIR = "scenes"
RESULT_FILE = "train_result.json"
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
CHECKPOINT_PREFIX = "step-"
#: Digits of the step number in checkpoint folder names.
CHECKPOINT_DIGITS = 6
#: Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset(
    {"steps", "log_interval", "ckpt_interval", "keep_checkpoints", "eval_interval", "device"}
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced.

    Attributes:
        out_dir: the run folder.
        model_dir: the trained model (project format), loadable by ``load_model`` / ``lrs ask``.
        steps: optimizer steps done.
        final_metrics: the last metrics line (``step``, ``loss``, ``topk_recall``...).
    """

    out_dir: Path
    model_dir: Path
    steps: int
    final_metrics: dict[str, Any]


def trainable_parameters(
    model: VisionLanguageModel, trainable: str
) -> list[tuple[str, torch.nn.Parameter]]:
    """Set ``requires_grad`` by the config's choice and return the trainable ``(name, param)``.

    ``"rfm"``: the RFM layers and norm; ``"rfm+projector"``: also the projector and the
    image-newline vector; ``"all"``: every parameter.
    """
    prefixes = {
        "rfm": ("rfm.",),
        "rfm+projector": ("rfm.", "projector.", "image_newline"),
        "all": ("",),
    }[trainable]
    chosen: list[tuple[str, torch.nn.Parameter]] = []
    for name, param in model.named_parameters():
        flag = name.startswith(prefixes)
        param.requires_grad_(flag)
        if flag:
            chosen.append((name, param))
    return chosen


def _lr_factor(config: DistillConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(config.steps - config.warmup_steps, 1)
        progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith(CHECKPOINT_PREFIX)
        and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


@dataclass
class _RunState:
    """Mutable loop state, passed explicitly (one run, one thread)."""

    step: int
    position: tuple[int, int]
    last_recall: float | None = None
    last_recall_step: int | None = None


class _Trainer:
    """One training run (internal; use :func:`train_records` or :func:`train_rfm`)."""

    def __init__(
        self,
        loaded: LoadedModel,
        dataset: DistillDataset,
        out_dir: Path,
        *,
        config: DistillConfig,
        held_out_records: Sequence[int],
        train_records: Sequence[int],
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.dataset = dataset
        self.out_dir = out_dir
        self.config = config
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        self.params = trainable_parameters(self.model, config.trainable)
        if not self.params:
            raise ConfigError(f"trainable={config.trainable!r} selects no parameters")
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.params], lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config))
        self.train_views = subset(dataset, train_records)
        self.eval_views = subset(dataset, held_out_records)
        self.sampler = BucketSampler(
            lengths=tuple(dataset.lengths[i] for i in self.train_views),
            batch_size=config.batch_size,
            bucket_batches=config.bucket_batches,
            seed=config.seed,
        )
        self.pairs = distilled_pairs(
            self.model.config.rfm_llm_layers, skip_layers=config.skip_layers
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, state: _RunState) -> Path:
        root = self.out_dir / CHECKPOINTS_DIR
        final = root / f"{CHECKPOINT_PREFIX}{state.step:0{CHECKPOINT_DIGITS}d}"
        partial = root / (final.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        save_file(
            {name: p.detach().cpu().contiguous() for name, p in self.params},
            str(partial / TRAINABLE_FILE),
        )
        optimizer_state = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                tensors[f"state.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        save_file(tensors, str(partial / OPTIMIZER_FILE))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda.{index}"] = cuda_state
        save_file(rng, str(partial / RNG_FILE))
        meta = {
            "step": state.step,
            "position": list(state.position),
            "last_recall": state.last_recall,
            "last_recall_step": state.last_recall_step,
            "scheduler": self.scheduler.state_dict(),
            "param_groups": optimizer_state["param_groups"],
            "param_names": [name for name, _ in self.params],
            "config": self.config.to_dict(),
            "model_id": self.loaded.model_id,
        }
        (partial / STATE_FILE).write_text(json.dumps(meta, indent=1, default=list) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in _checkpoint_dirs(self.out_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)
        return final

    def load_checkpoint(self, folder: Path) -> _RunState:
        meta = json.loads((folder / STATE_FILE).read_text())
        saved = DistillConfig.from_dict(meta["config"]).to_dict()
        current = self.config.to_dict()
        changed = sorted(
            k for k in current if current[k] != saved[k] and k not in RESUMABLE_CHANGES
        )
        if changed:
            raise ConfigError(
                f"{folder}: the checkpoint was trained with other settings "
                f"({', '.join(f'{k}={saved[k]!r}' for k in changed)}); resume with the same "
                "settings, or start afresh with --no-resume or another --out folder"
            )
        names = [name for name, _ in self.params]
        if meta["param_names"] != names:
            raise ConfigError(
                f"{folder}: the checkpoint's trainable parameters differ from this model's; "
                "was it made from another model? start afresh with --no-resume"
            )
        weights = load_file(str(folder / TRAINABLE_FILE))
        with torch.no_grad():
            for name, param in self.params:
                param.copy_(weights[name].to(param.device, param.dtype))
        tensors = load_file(str(folder / OPTIMIZER_FILE))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            # load_state_dict moves moments to the parameters' device; "step" stays as AdamW wants
            state.setdefault(int(index), {})[name] = value
        param_groups = meta["param_groups"]
        for group in param_groups:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        self.optimizer.load_state_dict({"state": state, "param_groups": param_groups})
        self.scheduler.load_state_dict(meta["scheduler"])
        rng = load_file(str(folder / RNG_FILE))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            cuda_states = [rng[k] for k in sorted(rng) if k.startswith("cuda.")]
            if cuda_states:
                torch.cuda.set_rng_state_all(cuda_states)
        return _RunState(
            step=int(meta["step"]),
            position=(int(meta["position"][0]), int(meta["position"][1])),
            last_recall=meta["last_recall"],
            last_recall_step=meta["last_recall_step"],
        )

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self) -> float | None:
        """Mean top-k recall over the held-out views (None without held-out views)."""
        if not self.eval_views:
            return None
        recalls: list[torch.Tensor] = []
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self._autocast():
            size = self.config.batch_size
            for start in range(0, len(self.eval_views), size):
                batch = self.dataset.collate(self.model, self.eval_views[start : start + size])
                last = self.pairs[-1]
                (item,) = pair_logits(
                    self.model,
                    batch,
                    llm_layer_list=self.model.config.rfm_llm_layers,
                    pairs=[last],
                )
                recalls.append(
                    batch_topk_recall(
                        image_slice(item.teacher, batch),
                        image_slice(item.student, batch),
                        batch,
                        fraction=self.config.topk_fraction,
                    )
                )
        self.model.train(was_training)
        values = torch.cat(recalls)
        values = values[~values.isnan()]
        return float(values.mean()) if values.numel() else None

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            device_type=self.device.type,
            dtype=torch.bfloat16,
            enabled=self.config.precision == "bf16",
        )

    # -- the loop ------------------------------------------------------------------------------

    def _micro_batch(self, state: _RunState) -> DistillBatch:
        positions, state.position = self.sampler.next_batch(state.position)
        return self.dataset.collate(self.model, [self.train_views[i] for i in positions])

    def run(self, *, resume: bool, progress: Progress | None) -> dict[str, Any]:
        metrics_path = self.out_dir / METRICS_FILE
        checkpoints = _checkpoint_dirs(self.out_dir)
        if resume and checkpoints:
            state = self.load_checkpoint(checkpoints[-1])
            _truncate_metrics(metrics_path, state.step)
            log.info("resumed %s at step %d", self.out_dir, state.step)
        else:
            if (self.out_dir / CHECKPOINTS_DIR).exists():
                shutil.rmtree(self.out_dir / CHECKPOINTS_DIR)
            metrics_path.unlink(missing_ok=True)
            state = _RunState(step=0, position=(0, 0))
            recall = self.evaluate()
            state.last_recall, state.last_recall_step = recall, 0
            _append_metrics(metrics_path, {"step": 0, "loss": None, "topk_recall": recall})
        config = self.config
        self.model.train()
        window = _Window()
        last_line: dict[str, Any] = {}
        while state.step < config.steps:
            started = time.perf_counter()
            for _ in range(config.grad_accum):
                batch = self._micro_batch(state)
                with self._autocast():
                    output = distill_loss(self.model, batch, config=config)
                (output.loss / config.grad_accum).backward()  # type: ignore[no-untyped-call]  # untyped upstream
                window.add(output.terms, output.topk_recall, batch)
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in self.params], config.max_grad_norm)
            lr = float(self.scheduler.get_last_lr()[0])
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            window.seconds += time.perf_counter() - started
            window.steps += 1
            if state.step % config.effective_eval_interval == 0 or state.step == config.steps:
                state.last_recall, state.last_recall_step = self.evaluate(), state.step
            if state.step % config.log_interval == 0 or state.step == config.steps:
                last_line = window.line(state, lr=lr)
                _append_metrics(metrics_path, last_line)
                window = _Window()
            if state.step % config.ckpt_interval == 0 or state.step == config.steps:
                self.save_checkpoint(state)
            if progress is not None:
                progress(state.step, config.steps)
        if not last_line:
            last_line = _last_metrics(metrics_path)
        return last_line


@dataclass
class _Window:
    """Sums over the steps since the last metrics line."""

    steps: int = 0
    micro_batches: int = 0
    seconds: float = 0.0
    samples: int = 0
    tokens: int = 0

    def __post_init__(self) -> None:
        self.terms: dict[str, float] = {}
        self.recalls: list[torch.Tensor] = []

    def add(self, terms: dict[str, float], recall: torch.Tensor, batch: DistillBatch) -> None:
        self.micro_batches += 1
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value
        self.recalls.append(recall.detach().cpu())
        self.samples += int(batch.attention_mask.shape[0])
        self.tokens += batch.n_tokens

    def line(self, state: _RunState, *, lr: float) -> dict[str, Any]:
        count = max(self.micro_batches, 1)
        terms = {name: value / count for name, value in self.terms.items()}
        recalls = torch.cat(self.recalls) if self.recalls else torch.zeros(0)
        recalls = recalls[~recalls.isnan()]
        seconds = max(self.seconds, 1e-9)
        return {
            "step": state.step,
            "loss": terms.pop("loss", None),
            **terms,
            "lr": lr,
            "topk_recall": state.last_recall,
            "topk_recall_step": state.last_recall_step,
            "train_topk_recall": float(recalls.mean()) if recalls.numel() else None,
            "steps_per_s": self.steps / seconds,
            "samples_per_s": self.samples / seconds,
            "tokens_per_s": self.tokens / seconds,
        }


def _append_metrics(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def _last_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return dict(json.loads(lines[-1])) if lines else {}


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the metrics lines at or before ``step`` (later ones are logged again)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and int(json.loads(line)["step"]) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """Return the metrics lines of a run folder, in order."""
    path = Path(out_dir) / METRICS_FILE
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def train_records(
    loaded: LoadedModel,
    records: Sequence[Record],
    out_dir: str | Path,
    *,
    config: DistillConfig,
    resume: bool = True,
    progress: Progress | None = None,
) -> TrainResult:
    """Distil the RFM of ``loaded`` on in-memory records and save the trained model.

    ``config.eval_samples`` records (a seeded choice) are held out: none of their views is trained
    on, and ``topk_recall`` is measured on them at step 0 and every ``effective_eval_interval``.

    Each metrics line holds ``step``, ``loss`` (total, mean over the window's micro-batches), the
    enabled terms (``distill``, ``kl_full``, ``kl_img``, ``mse_img``, ``lm``), ``lr``,
    ``topk_recall`` (held out; with ``topk_recall_step``, the step it was measured at),
    ``train_topk_recall``, ``steps_per_s``, ``samples_per_s`` and ``tokens_per_s``. The line of
    step 0 holds the held-out recall before training (``loss`` null).

    Args:
        loaded: the model and tokenizer, as loaded (the model is trained in place).
        records: image or feature-grid records.
        out_dir: the run folder (created).
        config: the settings.
        resume: continue from the newest checkpoint in ``out_dir`` when there is one; False starts
            afresh (old checkpoints and metrics are removed).
        progress: called with ``(step, steps)`` after every optimizer step.

    Returns:
        The :class:`TrainResult`.

    Raises:
        ConfigError: settings that do not fit the model or the checkpoint being resumed.
        DatasetError: unusable records.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / MODEL_DIR
    dataset = build_dataset(
        records,
        model=loaded.model.to(resolve_device(config.device)),
        tokenizer=loaded.tokenizer,
        family=loaded.family,
        views=config.views,
        max_level_tokens=config.max_level_tokens,
        store_dir=out / SCENES_DIR,
        exclude_newline_keys=config.exclude_newline_keys,
        cache_features=config.trainable == "rfm",
    )
    train_ids, held_ids = split_held_out(
        len(records), n_held_out=config.eval_samples, seed=config.seed
    )
    trainer = _Trainer(
        loaded,
        dataset,
        out,
        config=config,
        held_out_records=held_ids,
        train_records=train_ids,
    )
    final = trainer.run(resume=resume, progress=progress)
    for param in loaded.model.parameters():
        param.requires_grad_(False)
    loaded.model.eval()
    loaded.family.save(model_dir, model_id=f"{loaded.model_id}+rfm")  # the family's own format
    (out / RESULT_FILE).write_text(
        json.dumps({"steps": config.steps, "final_metrics": final}, indent=1) + "\n"
    )
    return TrainResult(out_dir=out, model_dir=model_dir, steps=config.steps, final_metrics=final)


def train_rfm(
    model_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    config: DistillConfig,
    resume: bool = True,
    progress: Progress | None = None,
    data_root: str | Path | None = None,
) -> TrainResult:
    """Distil a model's RFM from its LLM on a data file; the library entry point of training.

    Args:
        model_dir: a model directory :func:`lrs_core.models.loading.auto.load_model` reads.
        data_path: LLaVA-style ``.json`` or LRS-VQA-style ``.jsonl`` (see :mod:`.data`).
        out_dir: the run folder: ``metrics.jsonl``, ``checkpoints/``, ``model/``.
        config: the settings.
        resume: continue from the newest checkpoint when there is one.
        progress: called with ``(step, steps)`` after every optimizer step.
        data_root: folder the data file's image paths are relative to (default: its folder).

    Returns:
        The :class:`TrainResult`; ``model_dir`` is loadable by ``load_model`` and ``lrs ask``.
    """
    loaded = load_model(
        model_dir, device=config.device, dtype=torch.float32, attn_implementation="sdpa"
    )
    records = read_records(data_path, data_root=data_root)
    return train_records(loaded, records, out_dir, config=config, resume=resume, progress=progress)
