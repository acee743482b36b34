"""The one time an evidence pack carries, so that two packs of the same plan differ only where it is written.

The pack is otherwise reproducible. Its time fields are: summary.json `generated_at`; in oscal/*.json the
`metadata.last-modified` of both documents and, in the assessment results, the result's `start` and `end` and every
observation's `collected`; in findings.ocsf.jsonl every record's `time` (milliseconds since the epoch); and the lines
of manifest.sha256 for those files. Every one of them is this same instant.

With SOURCE_DATE_EPOCH set (seconds since the epoch, the reproducible-builds.org convention), that is the instant,
and two packs of the same plan are byte for byte the same; otherwise it is now.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"


def pack_time() -> datetime:
    """SOURCE_DATE_EPOCH if set (a whole number of seconds), else now; in UTC, to the millisecond.

    Raises:
        ValueError: SOURCE_DATE_EPOCH is set but is not a whole number of seconds.
    """
    epoch = os.environ.get(SOURCE_DATE_EPOCH, "").strip()
    if epoch:
        if not epoch.isdigit():
            raise ValueError(f"{SOURCE_DATE_EPOCH}={epoch!r} is not a whole number of seconds since the epoch")
        return datetime.fromtimestamp(int(epoch), UTC)
    now = datetime.now(UTC)
    # OSCAL and OCSF keep milliseconds: one instant, written the same in every file
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
