from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.errors import DatasetError
from lrs_core.evaluation import wordnet
from lrs_core.evaluation.wordnet import (
    DEBIAN_LEXNAMES_MANPAGE,
    DEBIAN_WORDNET_DIR,
    LEXNAMES,
    WORDNET_DATA_FILES,
    WordNetMatcher,
    assemble_wordnet,
    is_assembled,
    lexnames_text,
    read_manpage_lexnames,
)

HAS_DEBIAN_WORDNET = all((DEBIAN_WORDNET_DIR / name).is_file() for name in WORDNET_DATA_FILES)
needs_debian = pytest.mark.skipif(
    not HAS_DEBIAN_WORDNET, reason="needs apt-get install wordnet-base wordnet-sense-index"
)


def fake_source(tmp_path: Path) -> Path:
    """Tiny stand-ins for the Debian files (the assembly copies bytes; it does not parse them)."""
    source = tmp_path / "debian"
    source.mkdir()
    for name in WORDNET_DATA_FILES:
        (source / name).write_text(f"contents of {name}\n")
    return source


def test_lexnames_has_the_45_wordnet_rows() -> None:
    rows = lexnames_text().splitlines()
    assert len(rows) == len(LEXNAMES) == 45
    assert rows[0] == "00\tadj.all\t3"
    assert rows[3] == "03\tnoun.Tops\t1"
    assert rows[29] == "29\tverb.body\t2"
    assert rows[44] == "44\tadj.ppl\t3"
    assert rows[2] == "02\tadv.all\t4"


@pytest.mark.skipif(not DEBIAN_LEXNAMES_MANPAGE.is_file(), reason="needs wordnet-base's man page")
def test_lexnames_agree_with_the_installed_manual_page() -> None:
    assert read_manpage_lexnames(DEBIAN_LEXNAMES_MANPAGE) == LEXNAMES


def test_assembly_is_idempotent_and_complete(tmp_path: Path) -> None:
    source, target = fake_source(tmp_path), tmp_path / "nltk_data" / "corpora" / "wordnet"
    first = assemble_wordnet(target, source_dir=source, manpage=None)
    assert set(first.written) == {*WORDNET_DATA_FILES, "lexnames"} and first.kept == ()
    assert is_assembled(target) and not list(target.glob("*.partial"))
    assert (target / "lexnames").read_text() == lexnames_text()
    second = assemble_wordnet(target, source_dir=source, manpage=None)
    assert second.written == () and set(second.kept) == set(first.written)
    (target / "data.noun").write_text("truncated")  # a damaged copy is replaced
    assert assemble_wordnet(target, source_dir=source, manpage=None).written == ("data.noun",)


def test_missing_debian_data_says_what_to_install(tmp_path: Path) -> None:
    source = fake_source(tmp_path)
    (source / "index.sense").unlink()
    with pytest.raises(DatasetError, match="index.sense.*apt-get install wordnet-base"):
        assemble_wordnet(tmp_path / "out", source_dir=source, manpage=None)


def test_manual_page_disagreement_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "lexnames.5WN.gz"
    with gzip.open(page, "wt") as fh:
        fh.write(".TS\n00\tadj.all\tall adjective clusters\n01\tadj.other\tx\n.TE\n")
    with pytest.raises(DatasetError, match="differ"):
        assemble_wordnet(tmp_path / "out", source_dir=fake_source(tmp_path), manpage=page)


def test_incomplete_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="incomplete.*lrs setup"):
        WordNetMatcher(tmp_path)


@needs_debian
def test_real_assembly_reads_as_wordnet_30(wordnet_matcher) -> None:
    assert wordnet_matcher.version == "3.0"
    assert wordnet_matcher.are_synonyms("grey", "gray")
    assert not wordnet_matcher.are_synonyms("ship", "boat")


def test_setup_command_reports_and_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "nltk_data" / "corpora" / "wordnet"
    monkeypatch.setattr(wordnet, "default_wordnet_dir", lambda: target)
    monkeypatch.setattr(wordnet, "DEBIAN_WORDNET_DIR", fake_source(tmp_path))
    out = CliRunner().invoke(build_app(), ["setup", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["wordnet_dir"] == str(target) and "lexnames" in summary["written"]
    shutil.rmtree(wordnet.DEBIAN_WORDNET_DIR)
    shutil.rmtree(target)
    out = CliRunner().invoke(build_app(), ["setup"])
    assert out.exit_code == 1
    assert "apt-get install wordnet-base" in " ".join(out.output.split())
