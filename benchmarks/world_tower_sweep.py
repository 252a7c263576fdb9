"""Sweep of the world tower's stage 1 (dense per-cell targets): one configuration per process.

Run: ``PYTHONPATH=. python benchmarks/world_tower_sweep.py TAG key=value ...`` with keys ``patch``
(28), ``minutes`` (8), ``lr`` (2e-3), ``width`` (96), ``layers`` (3), ``batch`` (12 tiles), ``now``
(weight of the no-object class, 0.2), ``minvis`` (visibility threshold, level px, 4), ``objshare``
(share of tiles holding an object, a fraction such as 2/3 or 1) and ``scale0`` (curriculum start,
2.5). It trains the tower and projector of a fresh world model on stage 1 only, for a wall-clock
budget, on one torch thread, then prints ``RESULT TAG {json}``: held-out per-cell accuracy of kind
and colour on pooled tokens of cells holding a visible object, overall and split by thumbnail /
middle levels / finest level (``_thumb``, ``_mid``, ``_l0``), and the false-object rate on empty
cells. Run one process per core with ``taskset`` to compare configurations under equal compute
(docs/world.md records a 15-configuration run).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lrs_core.focus.tiles import read_thumbnail, read_tiles  # noqa: E402
from lrs_core.world import train as T  # noqa: E402
from lrs_core.world import views as V  # noqa: E402
from lrs_core.world.model import WorldModelSize, build_world_model  # noqa: E402

tag = sys.argv[1]
kw = dict(a.split("=") for a in sys.argv[2:])


def f(key: str, default: float) -> float:
    """The ``key=value`` argument as the default's type, or the default."""
    return type(default)(kw.get(key, default))


patch, minutes, lr = f("patch", 28), f("minutes", 8.0), f("lr", 2e-3)
width, layers, batch = f("width", 96), f("layers", 3), f("batch", 12)
T.NO_OBJECT_WEIGHT = f("now", 0.2)
V.cell_labels.__kwdefaults__["min_visible_px"] = f("minvis", 4.0)
objshare = Fraction(kw.get("objshare", "2/3"))
torch.set_num_threads(1)
size = WorldModelSize(
    patch_px=patch,
    vision_width=width,
    vision_layers=layers,
    vision_heads=max(4, width // 32),
    vision_mlp=width * 8 // 3,
)
config = T.WorldTrainConfig(
    seed=0,
    minutes=minutes * 4,
    eval_scenes=4,
    tower_lr=lr,
    size=size,
    start_object_scale=f("scale0", 2.5),
    tile_batch=batch,
)
model, tok = build_world_model(seed=0, size=size)
dip = T.dip_config_of(model)
ev = T.heldout_scenes(config, dip)
torch.manual_seed(0)
heads = T.AuxHeads(model.hidden_size)
params = [*model.vision_tower.parameters(), *model.projector.parameters(), *heads.parameters()]
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
rng = np.random.default_rng([0, 11])


start = time.perf_counter()
budget = minutes * 60
step = 0
si = 0
model.train()
while (done := (time.perf_counter() - start) / budget) < 1:
    scale = T.curriculum_scale(config, done)
    views = T._views_of(T._draw_scene(config, rng, T.scene_stream_seed(0, 7, si), scale), dip)
    si += 1
    items = T._stage1_items(views, rng, 2 * batch, object_share=objshare)
    for g in opt.param_groups:
        g["lr"] = lr * T.lr_factor(done)
    for chunk in (items[:batch], items[batch:]):
        if not chunk:
            continue
        losses = T._stage1_step(model, heads, views, chunk)
        tot = sum(losses.values(), torch.zeros(()))
        opt.zero_grad()
        tot.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(
                tag,
                step,
                round(done, 2),
                {k: round(float(v), 3) for k, v in losses.items()},
                flush=True,
            )
model.eval()
hits = defaultdict(list)
erng = np.random.default_rng(0)
with torch.no_grad():
    for views in ev:
        for level, tile in T._stage1_items(views, erng, 40):
            if level is None:
                px = read_thumbnail(views.pyramid, views.plan.thumbnail)
                lab = V.thumbnail_labels(views.scene, views.plan.thumbnail, grid_side=6)
                key = "thumb"
            else:
                px = read_tiles(views.pyramid, level, [tile])[0]
                lab = V.tile_labels(views.scene, level, tile, grid_side=6)
                key = "l0" if level.dip_level == views.plan.n_levels else "mid"
            tokens = model.encode_tiles(model.preprocess_tiles(px[None]), pooled=True)[0]
            has = lab.kind.reshape(-1) > 0
            for name in ("kind", "color"):
                pred = getattr(heads, name)(tokens).argmax(-1).numpy()
                ok = (pred == getattr(lab, name).reshape(-1))[has]
                hits[name].extend(ok.tolist())
                hits[f"{name}_{key}"].extend(ok.tolist())
            # false positives: predicted object where none
            none = lab.kind.reshape(-1) == 0
            pk = heads.kind(tokens).argmax(-1).numpy()
            hits["fp"].extend((pk[none] > 0).tolist())
res = {k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())}
res["n_kind"] = len(hits["kind"])
print("RESULT", tag, json.dumps(dict(kw=kw, cells=res, steps=step, scenes=si)), flush=True)
