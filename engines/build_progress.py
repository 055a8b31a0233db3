"""Progress of a compile inside `docker build`: ninja prints `[n/total] Building …` per file; the
image build reports it every tenth of the way, so a build of many minutes is never silent."""

from __future__ import annotations

import re

NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s")
REPORTS = 10


class CompileProgress:
    """Fed each line of a build step's output; `see` returns a line to show, or None."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._shown = -1

    def see(self, line: str) -> str | None:
        match = NINJA_STEP.match(line)
        if match is None:
            return None
        done, total = int(match[1]), int(match[2])
        if total <= 0 or done > total:
            return None
        tenth = done * REPORTS // total
        if tenth <= self._shown:
            return None
        self._shown = tenth
        return f"{done} of {total} files ({100 * done // total} %)"
