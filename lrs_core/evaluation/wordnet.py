"""WordNet 3.0 for the LRS-VQA scorer, assembled offline from Debian's packages.

The reference scorer (spec §7.3) asks NLTK's WordNet whether two answers share a synset. NLTK only
reads corpora from its data path, and nothing may be downloaded at run time, so
:func:`assemble_wordnet` builds the ``corpora/wordnet`` folder NLTK expects from the files of
Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages (``/usr/share/wordnet``). Those
packages lack the small ``lexnames`` file; its 45 rows are the table of the ``lexnames(5WN)``
manual page, kept here as :data:`LEXNAMES` and checked against the page when it is installed.

The default target, ``<sys.prefix>/nltk_data/corpora/wordnet``, is on NLTK's default search path, so
``nltk.corpus.wordnet`` works afterwards as well. ``lrs setup`` runs the assembly.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.errors import DatasetError

log = logging.getLogger(__name__)

#: Where Debian's ``wordnet-base`` and ``wordnet-sense-index`` install the WordNet 3.0 database.
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

#: The ``lexnames(5WN)`` manual page installed by ``wordnet-base``.
DEBIAN_LEXNAMES_MANPAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")

#: What to run when the Debian data is missing.
INSTALL_HINT = (
    "install Debian's WordNet data with 'apt-get install wordnet-base wordnet-sense-index' "
    "and run 'lrs setup'"
)

#: Database files NLTK's WordNet reader opens, copied verbatim from :data:`DEBIAN_WORDNET_DIR`.
WORDNET_DATA_FILES: tuple[str, ...] = (
    "cntlist.rev",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)

#: Syntactic category numbers of the ``lexnames`` file (lexnames(5WN), "Syntactic Category").
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

#: The 45 lexicographer file names of WordNet 3.0, in file-number order (lexnames(5WN)).
LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)

_MANPAGE_ROW = re.compile(r"^(\d\d)\t(\S+)")


def default_wordnet_dir() -> Path:
    """Return ``<sys.prefix>/nltk_data/corpora/wordnet``, the folder ``lrs setup`` fills."""
    return Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet"


def lexnames_text() -> str:
    """Return the ``lexnames`` file: ``NN<TAB>name<TAB>category`` per row, 45 rows."""
    rows = [
        f"{number:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n"
        for number, name in enumerate(LEXNAMES)
    ]
    return "".join(rows)


def read_manpage_lexnames(manpage: Path) -> tuple[str, ...]:
    """Return the lexicographer file names listed in the ``lexnames(5WN)`` manual page.

    Args:
        manpage: the gzip-compressed troff page (``lexnames.5WN.gz``).

    Raises:
        DatasetError: the page cannot be read or its table is not numbered 00, 01, ... in order.
    """
    try:
        with gzip.open(manpage, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as err:
        raise DatasetError(f"{manpage}: cannot read the lexnames(5WN) manual page ({err})") from err
    names: list[str] = []
    for line in lines:
        match = _MANPAGE_ROW.match(line)
        if match is None:
            continue
        if int(match.group(1)) != len(names):
            raise DatasetError(
                f"{manpage}: lexnames row {match.group(1)} is out of order "
                f"(expected {len(names):02d})"
            )
        names.append(match.group(2))
    return tuple(names)


@dataclass(frozen=True, kw_only=True)
class WordNetAssembly:
    """What :func:`assemble_wordnet` did.

    Attributes:
        target_dir: the assembled ``corpora/wordnet`` folder.
        written: files written by this call (empty when everything was already in place).
        kept: files already present and identical in size, left untouched.
        lexnames_checked: True when ``lexnames`` was checked against the installed manual page.
    """

    target_dir: Path
    written: tuple[str, ...]
    kept: tuple[str, ...]
    lexnames_checked: bool


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def assemble_wordnet(
    target_dir: Path | None = None,
    *,
    source_dir: Path | None = None,
    manpage: Path | None = DEBIAN_LEXNAMES_MANPAGE,
) -> WordNetAssembly:
    """Build an NLTK ``corpora/wordnet`` folder from Debian's WordNet 3.0 files; idempotent.

    Files are copied (never linked: NLTK refuses symbolic links in its data roots) through a
    ``.partial`` name and renamed, so an interrupted run never leaves a truncated file that looks
    complete. Files already present with the source's size are kept.

    Args:
        target_dir: folder to fill; default :func:`default_wordnet_dir`.
        source_dir: folder holding Debian's ``index.*``, ``data.*``, ``*.exc``, ``index.sense`` and
            ``cntlist.rev``; default :data:`DEBIAN_WORDNET_DIR`.
        manpage: the ``lexnames(5WN)`` page to check :data:`LEXNAMES` against; skipped when None
            or absent.

    Returns:
        What was written and what was kept.

    Raises:
        DatasetError: a Debian data file is missing (the message says what to install), or the
            manual page disagrees with :data:`LEXNAMES`.
    """
    target = default_wordnet_dir() if target_dir is None else Path(target_dir)
    source_dir = DEBIAN_WORDNET_DIR if source_dir is None else Path(source_dir)
    missing = [name for name in WORDNET_DATA_FILES if not (source_dir / name).is_file()]
    if missing:
        raise DatasetError(
            f"{source_dir}: WordNet 3.0 files {', '.join(missing)} are missing; {INSTALL_HINT}"
        )
    lexnames_checked = False
    if manpage is not None and manpage.is_file():
        listed = read_manpage_lexnames(manpage)
        if listed != LEXNAMES:
            raise DatasetError(
                f"{manpage}: its {len(listed)} lexicographer files differ from the 45 WordNet 3.0 "
                f"names lrs writes; is this WordNet 3.0? listed: {', '.join(listed)}"
            )
        lexnames_checked = True
    target.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    kept: list[str] = []
    for name in WORDNET_DATA_FILES:
        source, dest = source_dir / name, target / name
        if dest.is_file() and dest.stat().st_size == source.stat().st_size:
            kept.append(name)
            continue
        _copy_atomically(source, dest)
        written.append(name)
    lexnames = target / "lexnames"
    text = lexnames_text()
    if lexnames.is_file() and lexnames.read_text(encoding="utf-8") == text:
        kept.append("lexnames")
    else:
        partial = lexnames.with_name("lexnames.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, lexnames)
        written.append("lexnames")
    log.info("WordNet 3.0 in %s: %d files written, %d kept", target, len(written), len(kept))
    return WordNetAssembly(
        target_dir=target,
        written=tuple(written),
        kept=tuple(kept),
        lexnames_checked=lexnames_checked,
    )


def is_assembled(corpus_dir: Path) -> bool:
    """Whether ``corpus_dir`` holds every file NLTK's WordNet reader needs."""
    return all((corpus_dir / name).is_file() for name in (*WORDNET_DATA_FILES, "lexnames"))


def find_wordnet_dir() -> Path:
    """Return the ``corpora/wordnet`` folder NLTK finds on its data path.

    Raises:
        DatasetError: no complete WordNet folder is on NLTK's data path.
    """
    import nltk

    try:
        found = Path(str(nltk.data.find("corpora/wordnet")))
    except LookupError as err:
        raise DatasetError(
            f"WordNet is not on NLTK's data path ({', '.join(map(str, nltk.data.path))}); "
            f"{INSTALL_HINT}"
        ) from err
    if not is_assembled(found):
        raise DatasetError(f"{found}: the WordNet folder is incomplete; {INSTALL_HINT}")
    return found


class WordNetMatcher:
    """Answers whether two strings share a WordNet synset (the reference's ``are_synonyms``).

    The reference tests ``path_similarity > 0.8`` over all synset pairs; path similarity is
    ``1 / (distance + 1)``, so the test holds exactly when the two words share a synset. Lookups go
    through NLTK's ``synsets`` (lowercasing and morphy lemmatisation: ``roads`` -> ``road``); a
    string with a space matches no lemma. Synset lists are memoised per instance.
    """

    def __init__(self, corpus_dir: Path | None = None) -> None:
        """Load WordNet (a few seconds) from ``corpus_dir`` or from NLTK's data path.

        Args:
            corpus_dir: an assembled ``corpora/wordnet`` folder inside one of NLTK's data roots;
                default :func:`find_wordnet_dir`.

        Raises:
            DatasetError: the folder is missing, incomplete, or outside NLTK's data roots.
        """
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        root = find_wordnet_dir() if corpus_dir is None else Path(corpus_dir)
        if not is_assembled(root):
            raise DatasetError(f"{root}: the WordNet folder is incomplete; {INSTALL_HINT}")
        try:
            with warnings.catch_warnings():
                # No Open Multilingual WordNet is needed: only English synsets are compared.
                warnings.filterwarnings("ignore", message="The multilingual functions")
                self._reader: Any = WordNetCorpusReader(str(root), None)
        except PermissionError as err:
            raise DatasetError(
                f"{root}: NLTK refuses to read outside its data path; put the folder under "
                f"<NLTK data root>/corpora/wordnet (run 'lrs setup') ({err})"
            ) from err
        self.corpus_dir = root
        self._synsets: dict[str, frozenset[Any]] = {}

    @property
    def version(self) -> str:
        """WordNet version string read from the data files (``"3.0"``)."""
        return str(self._reader.get_version())

    def synsets(self, word: str) -> frozenset[Any]:
        """Return the synsets NLTK's ``wn.synsets(word)`` gives (all parts of speech)."""
        cached = self._synsets.get(word)
        if cached is None:
            cached = frozenset(self._reader.synsets(word)) if word else frozenset()
            self._synsets[word] = cached
        return cached

    def are_synonyms(self, first: str, second: str) -> bool:
        """Whether ``first`` and ``second`` share at least one WordNet synset."""
        return not self.synsets(first).isdisjoint(self.synsets(second))
