"""The offline model's Spanish time answer, whatever the hour: it says "Es la 01:08" at
one o'clock and "Son las 17:30" otherwise, so a test that looks for "Son las" alone fails
for an hour a day."""

from __future__ import annotations

import re

_TIME = re.compile(r"\b(Son las|Es la) \d\d:\d\d \(UTC\)")


def tells_the_time(text: str) -> bool:
    return _TIME.search(text) is not None
