"""Progress on the terminal for long CLI work (a render, a followed job)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time, imported when the first bar is made
    from tqdm import tqdm


class Bar:
    """A tqdm bar made on the first report, so bad input fails before any bar appears."""

    def __init__(self, unit: str):
        self.unit = unit
        self.bar: tqdm | None = None

    def update(self, done: int, total: int, stage: str | None = None, postfix: str | None = None) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
        self.bar.total = total
        if stage:
            self.bar.set_description(stage, refresh=False)
        if postfix is not None:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
