"""Progress of long runs: a tqdm bar on a terminal, a log line every ``every`` seconds elsewhere
(CI, ``ray job logs``)."""

from __future__ import annotations

import json
import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)


class RowProgress:
    """Rows labeled of an estimated total, rows/s and ETA.

    The total is estimated from bytes: the input bytes still to read, divided by the bytes per
    row seen so far (exact once a unit is committed; from the texts' own bytes before that).
    """

    def __init__(self, total_bytes: int, enabled: bool = True, every: float = 30.0, stream=None):
        self.total_bytes, self.enabled, self.every = total_bytes, enabled, every
        self.stream = stream or sys.stderr
        self.rows = self.text_bytes = self.unit_rows = self.unit_bytes = 0
        self.began = self.last_log = time.time()
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=None, unit=" rows", dynamic_ncols=True, file=self.stream, smoothing=0.1, desc="labeling"
            )

    def estimated_total(self) -> int | None:
        if self.unit_rows and self.unit_bytes:
            per_row = self.unit_bytes / self.unit_rows
        elif self.rows and self.text_bytes:
            per_row = self.text_bytes / self.rows
        else:
            return None
        return max(self.rows, int(self.total_bytes / per_row))

    def update(self, rows: int, text_bytes: int) -> None:
        self.rows += rows
        self.text_bytes += text_bytes
        self._show(rows)

    def unit_done(self, rows: int, unit) -> None:
        self.unit_rows += rows
        self.unit_bytes += max(0, unit.stop - unit.start) if unit.stop >= 0 and unit.fmt != "parquet" else 0
        self._show(0)

    def _show(self, added: int) -> None:
        if not self.enabled:
            return
        total = self.estimated_total()
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(added)
            return
        now = time.time()
        if now - self.last_log >= self.every:
            self.last_log = now
            rate = self.rows / max(now - self.began, 1e-9)
            eta = f", ETA {(total - self.rows) / rate / 60:.1f} min" if total and rate else ""
            of = f" of ~{total:,}" if total else ""
            log.info("labeled %s rows%s, %.1f rows/s%s", f"{self.rows:,}", of, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


PROGRESS_MARK = "@albert-ray-progress "  # a worker's bar state, drawn by the driver (never printed)


class StepBar:
    """An epoch's steps as a progress bar (loss in the description) on rank 0, when the driver's
    output is a terminal: in a Ray worker, the state goes to the driver as a marked line at most
    twice a second and :class:`DriverBars` draws it there; in-process, plain tqdm. Otherwise
    nothing: the loop's periodic log lines stand in (CI, ``ray job logs``)."""

    def __init__(self, enabled: bool, total: int, desc: str, in_ray: bool):
        self.bar, self.desc, self.in_ray, self.total = None, desc, in_ray, total
        self.n, self.loss, self.sent = 0, None, 0.0
        if enabled and in_ray:
            self.bar = "driver"
            self._send()
        elif enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    def step(self, loss: float | None = None) -> None:
        if self.bar is None:
            return
        self.n, self.loss = self.n + 1, loss
        if self.in_ray:
            if time.time() - self.sent >= 0.5:
                self._send()
            return
        if loss is not None:
            self.bar.set_description(f"{self.desc} loss {loss:.4f}")
        self.bar.update(1)

    def _send(self, done: bool = False) -> None:
        self.sent = time.time()
        print(
            PROGRESS_MARK
            + json.dumps(
                {"desc": self.desc, "n": self.n, "total": self.total, "loss": self.loss, "done": done}
            ),
            flush=True,
        )

    def close(self) -> None:
        if self.bar == "driver":
            self._send(done=True)
        elif self.bar is not None:
            self.bar.refresh()  # the last steps may have come within tqdm's mininterval (see DriverBars)
            self.bar.close()
        self.bar = None


class DriverBars:
    """The driver's tqdm bars for the progress lines workers send (see :class:`StepBar`)."""

    def __init__(self, stream=None):
        self.stream, self.bars = stream or sys.stderr, {}

    def update(self, line: str) -> None:
        state = json.loads(line[line.index(PROGRESS_MARK) + len(PROGRESS_MARK) :])
        bar = self.bars.get(state["desc"])
        if bar is None:
            bar = self.bars[state["desc"]] = tqdm(
                total=state["total"], desc=state["desc"], file=self.stream, dynamic_ncols=True, leave=False
            )
        if state["loss"] is not None:
            bar.set_description(f"{state['desc']} loss {state['loss']:.4f}", refresh=False)
        bar.update(state["n"] - bar.n)
        if state["done"]:
            # tqdm draws an update only mininterval (0.1 s) after the last one, and the log monitor
            # hands over a worker's lines in batches: without this the final state was never drawn
            bar.refresh()
            bar.close()
            del self.bars[state["desc"]]


def bars_wanted() -> bool:
    """Progress bars when this process (the driver) writes to a terminal."""
    return sys.stderr.isatty()
