"""Long work reports its progress in the logs when no terminal watches (a Prefect worker)."""

import logging

from react_core.progress import bar


def test_progress_is_logged_at_start_throttled_and_at_the_end(caplog):
    # refreshes far apart: only the first and the last line
    with (
        caplog.at_level(logging.INFO, logger="react_core.progress"),
        bar(1000, "pretrain tiny", "step", every_s=3600) as b,
    ):
        for _ in range(1000):
            b.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "react_core.progress"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("pretrain tiny:   0%") and "0/1000" in lines[0]
    assert lines[-1].startswith("pretrain tiny: 100%") and "1000/1000" in lines[-1]


def test_every_refresh_is_one_line_when_asked_and_silent_when_disabled(caplog):
    with caplog.at_level(logging.INFO, logger="react_core.progress"):
        with bar(4, "embed", "shard", every_s=0) as b:
            for _ in range(4):
                b.update(1)
        with bar(4, "rank 1", "step", enabled=False) as b:
            b.update(4)
    lines = [r.getMessage() for r in caplog.records if r.name == "react_core.progress"]
    assert [line.split("|")[0].strip() for line in lines][:5] == ["embed:   0%", "embed:  25%", "embed:  50%",
                                                                  "embed:  75%", "embed: 100%"]  # fmt: skip
    assert not any("rank 1" in line for line in lines)
