"""One writer per answers folder and per predictions file, checked with two real processes.

Measured before the locks: two answer runs into one folder wrote every row twice, and two
``lrs eval run`` into one file left it unusable. Each test starts a real writer process that holds
its target (``tests/lrs_core/writer_proc.py``), then a second real process, and checks that the
second is refused with the holder named (pid, host, since), or queues with ``--wait``, and that
no id is written twice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrs_core.evaluation.synth import SynthConfig, SynthSet, write_synthetic_set
from lrs_core.outputs.parts import read_records

REPO = Path(__file__).resolve().parents[2]
#: Seconds a process may take to start, take its lock and say so (imports on a busy machine).
START_TIMEOUT_S = 120.0
#: Seconds a ``--wait`` writer must stay blocked to count as queued.
QUEUED_S = 1.5
TINY_SYNTH = SynthConfig(
    seed=5,
    n_scenes=1,
    side_px=320,
    large_side_px=320,
    objects_per_scene=4,
    min_object_px=8,
    max_object_px=32,
)


def _env() -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "COLUMNS": "400",  # one error line, not wrapped by the console
    }


def _writer(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lrs_core.writer_proc", *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], ready: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the holder exited early ({proc.returncode}): {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the holder never took its lock")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=START_TIMEOUT_S)
    return proc.returncode, err


def _assert_names_holder(stderr: str, holder: subprocess.Popen[str]) -> None:
    assert f"pid {holder.pid} on host {socket.gethostname()} since " in stderr, stderr
    assert "--wait" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("first", ["one", "two"])
def test_second_answer_writer_is_refused_in_both_orders(tmp_path: Path, first: str) -> None:
    out = tmp_path / "answers"
    qids = {"one": "a,b", "two": "b,c"}
    second = "two" if first == "one" else "one"
    release = tmp_path / "release"
    holder = _writer("answers", str(out), qids[first], str(tmp_path / "ready1"), str(release))
    _wait_ready(holder, tmp_path / "ready1")
    other = _writer("answers", str(out), qids[second], str(tmp_path / "ready2"), str(release))
    code, stderr = _finish(other)
    assert code == 1
    _assert_names_holder(stderr, holder)
    assert not (tmp_path / "ready2").exists()
    release.touch()
    assert _finish(holder)[0] == 0
    assert [r.question_id for r in read_records(out, unique=False)] == qids[first].split(",")
    # run again once the first is done: only its own missing id is added
    again = _writer("answers", str(out), qids[second], str(tmp_path / "ready3"), str(release))
    assert _finish(again)[0] == 0
    ids = [r.question_id for r in read_records(out, unique=False)]
    assert sorted(ids) == ["a", "b", "c"] and len(ids) == len(set(ids))
    assert not list(tmp_path.glob("*.lock.holder"))  # released holders leave no record behind


def test_answer_writer_with_wait_queues_and_skips_what_is_done(tmp_path: Path) -> None:
    out = tmp_path / "answers"
    release = tmp_path / "release"
    holder = _writer("answers", str(out), "a,b", str(tmp_path / "ready1"), str(release))
    _wait_ready(holder, tmp_path / "ready1")
    queued = _writer("answers", str(out), "a,b,c", str(tmp_path / "ready2"), str(release), "--wait")
    time.sleep(QUEUED_S)
    assert queued.poll() is None and not (tmp_path / "ready2").exists()  # blocked on the lock
    release.touch()
    assert _finish(holder)[0] == 0
    assert _finish(queued)[0] == 0
    assert [r.question_id for r in read_records(out, unique=False)] == ["a", "b", "c"]


@pytest.fixture(scope="module")
def two_questions(tmp_path_factory: pytest.TempPathFactory) -> SynthSet:
    """One small real scene and a question file of two of its questions."""
    synth = write_synthetic_set(tmp_path_factory.mktemp("lock-synth"), config=TINY_SYNTH)
    rows = [q.to_dict() for q in synth.questions][:2]
    (synth.data_root / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return synth


def _cli_run(data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    code = "from lrs_core.cli import main; main()"
    args = ["eval", "run", "lrs-vqa", "--data", str(data), "--questions", str(data / "two.jsonl")]
    args += ["--model", str(data / "no-model-needed"), "--out", str(out), *extra]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ids(out: Path) -> list[str]:
    return [json.loads(line)["question_id"] for line in out.read_text().splitlines()]


@pytest.mark.parametrize("second", ["cli", "library"])
def test_second_eval_run_on_one_file_is_refused(
    tmp_path: Path, two_questions: SynthSet, second: str
) -> None:
    data = two_questions.data_root
    out = tmp_path / "pred.jsonl"
    release = tmp_path / "release"
    questions = str(data / "two.jsonl")
    holder = _writer("predictions", questions, str(out), str(tmp_path / "r1"), str(release))
    _wait_ready(holder, tmp_path / "r1")  # mid-run: its first line is written
    before = out.read_bytes()
    if second == "cli":
        other = _cli_run(data, out)
    else:
        other = _writer("predictions", questions, str(out), str(tmp_path / "r2"), str(release))
    code, stderr = _finish(other)
    assert code == 1
    _assert_names_holder(stderr, holder)
    assert out.read_bytes() == before  # the refused run did not touch the file
    release.touch()
    assert _finish(holder)[0] == 0
    ids = _ids(out)
    assert len(ids) == 2 and len(set(ids)) == 2


def test_eval_run_with_wait_queues_then_finds_everything_done(
    tmp_path: Path, two_questions: SynthSet
) -> None:
    data = two_questions.data_root
    out = tmp_path / "pred.jsonl"
    release = tmp_path / "release"
    holder = _writer(
        "predictions", str(data / "two.jsonl"), str(out), str(tmp_path / "r1"), str(release)
    )
    _wait_ready(holder, tmp_path / "r1")
    queued = _cli_run(data, out, "--wait", "--json")
    time.sleep(QUEUED_S)
    assert queued.poll() is None  # blocked on the lock
    release.touch()
    assert _finish(holder)[0] == 0
    stdout, stderr = queued.communicate(timeout=START_TIMEOUT_S)
    assert queued.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["n_already_done"], summary["n_answered"]) == (2, 0)  # no model was needed
    ids = _ids(out)
    assert len(ids) == 2 and len(set(ids)) == 2
