"""Fixtures of the evaluation tests: the WordNet matcher, loaded once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lrs_core.errors import DatasetError
from lrs_core.evaluation.wordnet import (
    DEBIAN_WORDNET_DIR,
    WORDNET_DATA_FILES,
    WordNetMatcher,
    assemble_wordnet,
    find_wordnet_dir,
)


@pytest.fixture(scope="session")
def wordnet_matcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WordNetMatcher]:
    """WordNet from NLTK's data path (``lrs setup``), or assembled into a temporary data root."""
    try:
        installed = WordNetMatcher(find_wordnet_dir())
    except DatasetError:
        installed = None
    if installed is not None:
        yield installed
        return
    if not all((DEBIAN_WORDNET_DIR / name).is_file() for name in WORDNET_DATA_FILES):
        pytest.skip("needs Debian's wordnet-base and wordnet-sense-index (apt-get install ...)")
    import nltk

    data_root = tmp_path_factory.mktemp("nltk_data")
    assemble_wordnet(data_root / "corpora" / "wordnet")
    with pytest.MonkeyPatch.context() as patch:  # NLTK reads only inside its data roots
        patch.setattr(nltk.data, "path", [str(data_root), *nltk.data.path])
        yield WordNetMatcher(data_root / "corpora" / "wordnet")
