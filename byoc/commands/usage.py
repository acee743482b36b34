"""`byoc usage`: what each API key, model or addon used, read from the usage ledger the gateways keep in the store.

The gateways write one hash per hour, key, model and addon (runtime/serve/ledger.py); this command sums the hours from
the one that holds `--since` to now and prints one row per key, model or addon: requests, prompt tokens, cached prompt
tokens, completion tokens and GPU-seconds. It reads names and counts only: the ledger holds no prompt or answer text.

`-f byoc.yaml` instead of `--store` reads a deployment's private store through one of its running gateway pods
(`kubectl exec`, as `byoc keys -f` does: byoc/commands/keys.py) and prints the same rows here.

redis is imported inside the command, so `byoc --help` stays instant.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from byoc.commands.common import Output, reporting
from byoc.commands.keys import FileOpt, run_in_gateway, which_store
from byoc.errors import ByocError

_RELATIVE = re.compile(r"(\d{1,6})([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
SCAN_BATCH = 1000  # keys per SCAN call and hashes per pipelined read
STORE_TIMEOUT_SECONDS = 10.0


class UsageOutput(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class Grouping(StrEnum):
    key = "key"
    model = "model"
    addon = "addon"


COLUMNS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "gpu_seconds")


def parse_since(value: str, now: datetime) -> datetime:
    """`30m`, `12h`, `7d` before `now`, or an ISO date or time (UTC unless it says otherwise). Raises ByocError
    naming `--since`."""
    text = value.strip()
    found = _RELATIVE.fullmatch(text)
    if found is not None:
        amount, unit = int(found.group(1)), found.group(2)
        if amount == 0:
            raise ByocError("--since", f"{value!r} is no time at all", "e.g. 30m, 12h, 7d or 2026-12-01")
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ByocError(
            "--since",
            f"{value!r} is neither a duration nor an ISO date",
            "e.g. 30m, 12h, 7d, 2026-12-01 or 2026-12-01T09:00:00Z",
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def read_usage(client: Any, since: datetime, by: Grouping) -> list[dict[str, Any]]:
    """One row per key, model or addon with its usage in the hours from the one holding `since`, sorted by name.

    `client` is a `redis.Redis`. Hour buckets are whole: `--since 30m` counts the whole hour it falls in.
    """
    from runtime.serve.ledger import COUNTERS, HOUR_FORMAT, PREFIX

    first = since.astimezone(UTC).strftime(HOUR_FORMAT)
    names = [
        name
        for name in client.scan_iter(match=PREFIX + "*", count=SCAN_BATCH)
        if name[len(PREFIX) : len(PREFIX) + 10] >= first and name[len(PREFIX) : len(PREFIX) + 10].isdigit()
    ]
    totals: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), SCAN_BATCH):
        pipe = client.pipeline(transaction=False)
        for name in names[start : start + SCAN_BATCH]:
            pipe.hgetall(name)
        for bucket in pipe.execute():
            if not bucket:  # expired between the scan and the read
                continue
            group = bucket.get(by.value, "")
            row = totals.setdefault(group, {by.value: group, **dict.fromkeys(COLUMNS, 0)})
            for counter in COUNTERS:
                count = int(bucket.get(counter, 0))
                if counter == "gpu_microseconds":
                    row["gpu_seconds"] += count
                else:
                    row[counter] += count
    rows = [totals[name] for name in sorted(totals)]
    for row in rows:
        row["gpu_seconds"] = round(row["gpu_seconds"] / 1_000_000, 6)
    return rows


def _table(rows: list[dict[str, Any]], by: Grouping) -> str:
    header = [by.value, "requests", "prompt tokens", "cached", "cached %", "completion tokens", "GPU-seconds"]
    lines = [header]
    for row in rows:
        share = 100 * row["cached_tokens"] / row["prompt_tokens"] if row["prompt_tokens"] else 0.0
        lines.append(
            [
                row[by.value],
                str(row["requests"]),
                str(row["prompt_tokens"]),
                str(row["cached_tokens"]),
                f"{share:.1f}",
                str(row["completion_tokens"]),
                f"{row['gpu_seconds']:.3f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        numbers = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        cells = [line[0].ljust(widths[0]), *numbers]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _csv(rows: list[dict[str, Any]], by: Grouping) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[by.value, *COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().rstrip("\n")


def usage(
    store: Annotated[
        str | None,
        typer.Option("--store", help="redis:// or rediss:// URL of the store the gateways write the ledger to; or -f."),
    ] = None,
    file: FileOpt = None,
    store_password_file: Annotated[
        Path | None, typer.Option("--store-password-file", help="File holding the store's password.")
    ] = None,
    store_ca_file: Annotated[
        Path | None, typer.Option("--store-ca-file", help="PEM CA bundle that signed the store's TLS certificate.")
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="How far back: 30m, 12h, 7d, or an ISO date or time (UTC).")
    ] = "7d",
    by: Annotated[Grouping, typer.Option("--by", help="One row per key, model or addon.")] = Grouping.key,
    output: Annotated[
        UsageOutput, typer.Option("--output", "-o", help="table for people, json or csv for tools.")
    ] = UsageOutput.table,
) -> None:
    """Usage per API key, model or addon from the gateways' ledger: requests, prompt, cached and completion tokens,
    GPU-seconds."""
    with reporting(Output.json if output is UsageOutput.json else Output.text):
        which_store(store, file, {"--store-password-file": store_password_file, "--store-ca-file": store_ca_file})
        now = datetime.now(UTC)
        start = parse_since(since, now)
        if file is not None:
            flags = ("--store", "--store-password-file", "--store-ca-file")
            body = run_in_gateway(file, ["usage", "--since", since, "--by", by.value], flags)
        else:
            rows = _read_store(str(store), store_password_file, store_ca_file, start, by)
            body = {"since": start.isoformat(), "until": now.isoformat(), "by": by.value, "usage": rows}
    _show(body, by, output)


def _read_store(
    store: str, store_password_file: Path | None, store_ca_file: Path | None, start: datetime, by: Grouping
) -> list[dict[str, Any]]:
    """The usage rows from the store at `store`; ByocError naming --store when it cannot be read."""
    from byoc.extras import require
    from runtime.serve.ledger import check_store

    require("store", "byoc usage")
    check_store(store, store_password_file, store_ca_file)
    import redis

    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": STORE_TIMEOUT_SECONDS,
        "socket_connect_timeout": STORE_TIMEOUT_SECONDS,
    }
    if store_password_file is not None:
        options["password"] = store_password_file.read_text().strip()
    if store_ca_file is not None:
        options["ssl_ca_certs"] = str(store_ca_file)
    client = redis.Redis.from_url(store, **options)
    try:
        return read_usage(client, start, by)
    except redis.RedisError as exc:
        raise ByocError(
            "--store",
            f"could not read the ledger at {store}: {type(exc).__name__}: {str(exc)[:200]}",
            "check the URL, --store-password-file, --store-ca-file, and that this machine can reach the store",
        ) from None
    finally:
        client.close()


def _show(body: dict[str, Any], by: Grouping, output: UsageOutput) -> None:
    """`body`: since and until (ISO times), by, and the usage rows."""
    rows = body["usage"]
    if output is UsageOutput.json:
        print(json.dumps(body, indent=2))
    elif output is UsageOutput.csv:
        print(_csv(rows, by))
    else:
        print(_table(rows, by) if rows else f"no usage recorded since {body['since']}")


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
