"""The one loop: a view visits levels, an executor encodes and scores them, then the LLM view.

The same function serves an answer (:class:`~lrs_core.focus.executor.ModelExecutor`) and a dry run
(:class:`~lrs_core.focus.executor.CountingExecutor`)::

    visit = view.first_visit(state)          # budget checks; None = the thumbnail alone
    thumb = executor.thumbnail(state)
    while visit:
        feats = executor.tiles(visit)        # cached or encoded (counted)
        scored = executor.score(view.rfm_pass(visit)) if view.scores else unscored(visit)
        visit = view.next_visit(scored)      # zoom (focus) or stop (baselines)
    llm_view = view.llm_view(state)          # pruned (focus) or whole
    llm_input = executor.llm_input(llm_view) # embeddings, or None when counting
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrs_core.focus.executor import Executor, Features, unscored
from lrs_core.focus.state import FocusState, LlmInput
from lrs_core.focus.views import LlmView, View


@dataclass(frozen=True, eq=False, kw_only=True)
class BuiltView:
    """One question up to the LLM.

    Attributes:
        llm_view: the tokens the LLM gets (counts, and the sequence when built).
        llm_input: its embeddings and position ids (None when only counted).
    """

    llm_view: LlmView
    llm_input: LlmInput | None


def run_view(view: View, executor: Executor, state: FocusState, pyramid: Any) -> BuiltView:
    """Visit the view's levels and build what the LLM gets; ``state`` collects the accounting.

    Args:
        view: the strategy.
        executor: runs the model, or only counts.
        state: the question's fresh state (prompt, DIP plan, allowance).
        pyramid: the opened scene (None when counting a bare scene size).

    Raises:
        TokenBudgetError: the view does not fit the allowance.
    """
    visit = view.first_visit(state)
    thumb: Features = executor.thumbnail(state, pyramid)
    while visit is not None:
        state.tile_feats = executor.tiles(state, pyramid, visit)
        if view.scores:
            scored = executor.score(state, view.rfm_pass(state, visit), thumb)
        else:
            scored = unscored(visit)
        state.visited.append(scored)
        visit = view.next_visit(state, scored, pyramid)
    llm_view = view.llm_view(state)
    return BuiltView(llm_view=llm_view, llm_input=executor.llm_input(llm_view, thumb, state))
