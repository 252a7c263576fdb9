"""Prefect artifacts of answer runs: the answers table, a summary, overlay images, progress.

The flows publish what a person watching a run in the Prefect UI wants to see: which questions were
answered and how, what failed and why, how many vision tokens and FLOPs the preset saved against
the ``full`` baseline (the whole scene at full resolution, counted by the engine's dry-run plan on
the same scene and question), and where the model looked (the overlay PNGs).

The row dicts these helpers read are the ones :func:`lrs_core.batch.run.run_batch` returns (see
:mod:`lrs_core.batch.run`): ``question_id``, ``scene``, ``scene_id``,
``question``, ``status`` (``answered``, ``skipped`` or ``failed``), ``answer``, ``error``,
``vision_tokens``, ``flops``, ``full_vision_tokens``, ``full_flops``, ``seconds``, ``overlay``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlencode
from uuid import UUID

from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

#: Seconds between two updates of a progress artifact.
PROGRESS_INTERVAL_S = 2.0
PERCENT = 100.0
#: Characters of an answer or error shown in a table cell.
CELL_CHARS = 200
#: Overlay images published one by one as image artifacts (URL outputs only), at most.
MAX_IMAGE_ARTIFACTS = 20
#: URL schemes a browser can load an overlay from (``create_image_artifact`` needs one).
BROWSER_SCHEMES = ("http://", "https://")
STATUSES = ("answered", "skipped", "failed")
#: Environment variable naming the base URL of a running ``lrs serve`` (for example
#: ``http://127.0.0.1:8000``); when set, run summaries link to its map of the run's answers.
SERVE_URL_ENV = "LRS_SERVE_URL"


def answers_map_url(serve_url: str, out: str) -> str:
    """URL of ``lrs serve``'s page filtered to the run written to ``out`` (its folder name)."""
    run = out.rstrip("/").rsplit("/", 1)[-1]
    return f"{serve_url.rstrip('/')}/?{urlencode({'run': run})}"


def _cell(value: Any) -> str:
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _md(value: Any) -> str:
    return _cell(value).replace("|", "\\|")


def answers_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the rows of the answers table artifact (one short, flat row per question).

    Args:
        rows: answer rows (see the module docstring).

    Returns:
        Rows with ``question_id``, ``scene_id``, ``status``, ``question``, ``answer``,
        ``vision_tokens``, ``full_vision_tokens``, ``tflops``, ``seconds``, ``error``.
    """
    table = []
    for row in rows:
        flops = row.get("flops")
        table.append(
            {
                "question_id": row["question_id"],
                "scene_id": row.get("scene_id") or "",
                "status": row["status"],
                "question": _cell(row.get("question")),
                "answer": _cell(row.get("answer")),
                "vision_tokens": row.get("vision_tokens"),
                "full_vision_tokens": row.get("full_vision_tokens"),
                "tflops": None if flops is None else round(float(flops) / 1e12, 4),
                "seconds": None if row.get("seconds") is None else round(float(row["seconds"]), 2),
                "error": _cell(row.get("error")),
            }
        )
    return table


def savings(rows: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Sum the vision tokens and FLOPs of answered rows and of their ``full`` baselines.

    Only rows answered in this run that have a baseline are counted (skipped rows were counted by
    the run that answered them).

    Returns:
        ``n`` (rows counted), ``vision_tokens``, ``full_vision_tokens``, ``flops``,
        ``full_flops``, ``token_saving`` and ``flop_saving`` (1 - ours / full; None when nothing
        was counted).
    """
    counted = [
        r
        for r in rows
        if r["status"] == "answered" and r.get("full_flops") and r.get("full_vision_tokens")
    ]
    tokens = sum(int(r["vision_tokens"]) for r in counted)
    full_tokens = sum(int(r["full_vision_tokens"]) for r in counted)
    flops = sum(float(r["flops"]) for r in counted)
    full_flops = sum(float(r["full_flops"]) for r in counted)
    return {
        "n": len(counted),
        "vision_tokens": tokens,
        "full_vision_tokens": full_tokens,
        "flops": flops,
        "full_flops": full_flops,
        "token_saving": 1.0 - tokens / full_tokens if full_tokens else None,
        "flop_saving": 1.0 - flops / full_flops if full_flops else None,
    }


def summary_markdown(
    rows: Sequence[dict[str, Any]],
    *,
    out: str,
    model: str,
    preset: str,
    serve_url: str | None = None,
) -> str:
    """Return the markdown summary of an answer run: counts, savings, questions, failures.

    Args:
        rows: answer rows of the run (answered, skipped and failed).
        out: the batch output folder.
        model: the model directory.
        preset: the engine preset.
        serve_url: base URL of an ``lrs serve`` showing ``out``; adds a link to its map.
    """
    counts = {status: sum(1 for r in rows if r["status"] == status) for status in STATUSES}
    saved = savings(rows)
    lines = [
        "# Answers",
        "",
        f"Model `{model}`, preset `{preset}`; outputs in `{out}`.",
        "",
        *(
            [f"[Open these answers on the map]({answers_map_url(serve_url, out)})", ""]
            if serve_url
            else []
        ),
        f"- answered: {counts['answered']}",
        f"- skipped (answered by an earlier run): {counts['skipped']}",
        f"- failed: {counts['failed']}",
        "",
        "## Savings against the `full` baseline",
        "",
    ]
    if saved["n"]:
        lines += [
            "| | this run | full | saved |",
            "|---|---|---|---|",
            f"| vision tokens to the LLM | {saved['vision_tokens']} | "
            f"{saved['full_vision_tokens']} | {100 * float(saved['token_saving'] or 0):.1f}% |",
            f"| TFLOPs | {float(saved['flops'] or 0) / 1e12:.4f} | "
            f"{float(saved['full_flops'] or 0) / 1e12:.4f} | "
            f"{100 * float(saved['flop_saving'] or 0):.1f}% |",
            "",
            f"Over {saved['n']} questions answered in this run; the baseline is the engine's "
            "dry-run plan of preset `full` (every tile of the finest level) on the same scene "
            "and question.",
        ]
    else:
        lines.append("No question was answered in this run, so there is nothing to compare.")
    lines += ["", "## Questions", "", "| id | scene | status | question | answer |"]
    lines.append("|---|---|---|---|---|")
    for row in rows:
        lines.append(
            f"| {_md(row['question_id'])} | {_md(row.get('scene_id') or row.get('scene'))} | "
            f"{row['status']} | "
            f"{_md(row.get('question'))} | {_md(row.get('answer'))} |"
        )
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failures", "", "| id | scene | error |", "|---|---|---|"]
        for row in failed:
            lines.append(
                f"| {_md(row['question_id'])} | `{_md(row.get('scene'))}` | {_md(row['error'])} |"
            )
    return "\n".join(lines) + "\n"


def overlays_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Return a markdown list of the overlay PNGs (embedded when they are browser URLs)."""
    lines = ["# Where the model looked", ""]
    with_overlay = [r for r in rows if r.get("overlay")]
    if not with_overlay:
        return "\n".join([*lines, "No overlay was written in this run."]) + "\n"
    lines.append(
        "Final-level evidence tiles (thick outlines), coarser tiles and kept tokens over the RFM "
        "heat map on the scene thumbnail."
    )
    lines.append("")
    for row in with_overlay:
        path = str(row["overlay"])
        if path.startswith(BROWSER_SCHEMES):
            lines.append(f"- **{_md(row['question_id'])}**: {_md(row.get('answer'))}")
            lines.append(f"  ![{_md(row['question_id'])}]({path})")
        else:
            lines.append(f"- **{_md(row['question_id'])}** `{path}`: {_md(row.get('answer'))}")
    return "\n".join(lines) + "\n"


def publish_answer_artifacts(
    rows: Sequence[dict[str, Any]],
    *,
    out: str,
    model: str,
    preset: str,
    key_prefix: str,
    serve_url: str | None = None,
) -> None:
    """Publish the answers table, the summary and the overlays of a run as Prefect artifacts.

    Keys: ``<key_prefix>-answers`` (table), ``<key_prefix>-summary`` and
    ``<key_prefix>-overlays`` (markdown); each overlay that is an http(s) URL also becomes an
    image artifact. Does nothing outside a flow or task run.

    Args:
        rows: answer rows of the run.
        out: the batch output folder.
        model: the model directory.
        preset: the engine preset.
        key_prefix: lowercase letters, digits and dashes (Prefect's artifact key rule).
        serve_url: base URL of an ``lrs serve`` showing ``out`` (default: the ``LRS_SERVE_URL``
            environment variable of the worker); the summary links to its map when set.
    """
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    serve_url = serve_url or os.environ.get(SERVE_URL_ENV) or None
    create_table_artifact(
        table=answers_table(rows), key=f"{key_prefix}-answers", description=f"Answers in {out}"
    )
    create_markdown_artifact(
        markdown=summary_markdown(rows, out=out, model=model, preset=preset, serve_url=serve_url),
        key=f"{key_prefix}-summary",
        description="Answer run summary: failures and savings against the full baseline",
    )
    create_markdown_artifact(
        markdown=overlays_markdown(rows),
        key=f"{key_prefix}-overlays",
        description="Evidence overlays",
    )
    urls = [r for r in rows if str(r.get("overlay") or "").startswith(BROWSER_SCHEMES)]
    for row in urls[:MAX_IMAGE_ARTIFACTS]:
        create_image_artifact(image_url=str(row["overlay"]), description=row["question_id"])


def progress_reporter(
    description: str,
    *,
    interval_s: float = PROGRESS_INTERVAL_S,
    task_run_only: bool = False,
) -> Callable[[int, int], None] | None:
    """Return a throttled ``progress(done, total)`` feeding a progress artifact.

    Args:
        description: what the artifact tracks (shown in the UI).
        interval_s: least seconds between two updates (the last update always goes through).
        task_run_only: attach only inside a task run (not directly in a flow run).

    Returns:
        The callback, or None outside a flow or task run (nothing to attach an artifact to).
    """
    in_task = TaskRunContext.get() is not None
    if not in_task and (task_run_only or FlowRunContext.get() is None):
        return None
    # Called from sync code, so the sync face of Prefect's async_dispatch answers (a UUID).
    artifact_id = cast(UUID, create_progress_artifact(0.0, description=description))
    last_update = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last_update
        now = time.monotonic()
        if done < total and now - last_update < interval_s:
            return
        last_update = now
        update_progress_artifact(artifact_id, PERCENT * done / max(total, 1))

    return report
