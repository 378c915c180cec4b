"""scripts/devstack.py's process bookkeeping on stand-in processes (the real start/stop runs in
tests/browser): pid files and logs, detached sessions, SIGTERM then SIGKILL, and a recycled pid
left alone."""

from __future__ import annotations

import os
import sys
import time

from shared.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import devstack  # noqa: E402


def sleeper(seconds: int, ignore_term: bool = False) -> list[str]:
    handler = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else ""
    return [
        sys.executable,
        "-c",
        f"import signal, time; {handler}print('up', flush=True); time.sleep({seconds})",
    ]


def prepare(tmp_path):
    for directory in (devstack.log_dir(tmp_path), devstack.run_dir(tmp_path)):
        directory.mkdir(parents=True, exist_ok=True)


def test_started_process_is_detached_logged_and_stopped(tmp_path):
    prepare(tmp_path)
    record = devstack.start_process("svc", sleeper(60), dict(os.environ), tmp_path)
    assert (devstack.run_dir(tmp_path) / "svc.pid").read_text().strip() == str(record.pid)
    assert os.getpgid(record.pid) == record.pid != os.getpgid(0), "own session and process group"
    deadline = time.monotonic() + 20
    while "up" not in (devstack.log_dir(tmp_path) / "svc.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "up" in (devstack.log_dir(tmp_path) / "svc.log").read_text()
    assert devstack.is_running(record)
    devstack.save_records(tmp_path, [record])
    assert devstack.load_records(tmp_path) == [record]
    devstack.stop_records([record])
    assert not devstack.is_running(record)


def test_stop_escalates_to_sigkill(tmp_path, monkeypatch):
    prepare(tmp_path)
    monkeypatch.setattr(devstack, "STOP_GRACE_SECONDS", 1.0)
    record = devstack.start_process("stubborn", sleeper(60, ignore_term=True), dict(os.environ), tmp_path)
    deadline = time.monotonic() + 20
    while (
        "up" not in (devstack.log_dir(tmp_path) / "stubborn.log").read_text() and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    started = time.monotonic()
    devstack.stop_records([record])
    assert not devstack.is_running(record)
    assert time.monotonic() - started < 10


def test_a_recycled_pid_is_not_ours(tmp_path):
    prepare(tmp_path)
    record = devstack.start_process("svc", sleeper(60), dict(os.environ), tmp_path)
    try:
        # Same pid, another start time: what a recycled pid looks like.
        impostor = devstack.ServiceRecord("svc", record.pid, record.started - 1, record.argv, record.log)
        assert not devstack.is_running(impostor)
        devstack.stop_records([impostor])  # must not signal the live process
        assert devstack.is_running(record)
    finally:
        devstack.stop_records([record])


def test_stop_without_a_stack_says_so(tmp_path, capsys):
    devstack.main(["stop", "--state-dir", str(tmp_path)])
    assert "not running" in capsys.readouterr().out
