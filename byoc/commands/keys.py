"""`byoc keys create|list|revoke|rotate`: API keys kept in the gateways' shared store (`--store`), picked up by every
gateway replica within seconds (each looks at the keys' version on its heartbeat, every second), revocation
included, without a restart. The gateways' keys file stays the bootstrap; a key in the store overrides a file key of
the same name, and `revoke` works on both.

Only hashed entries reach the store (name, sha256, rpm, tpm, max_concurrency, budget). `create` and `rotate` make the
key here (`secrets.token_urlsafe`, 256 bits), send only its SHA-256, and print the key once on stdout: it is never
written to any file or log, and cannot be shown again.

Only typer is imported here: the Redis client loads inside the command that runs, so `byoc --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, print_json, reporting
from byoc.errors import ByocError

if TYPE_CHECKING:
    from runtime.serve.keys import ApiKey, Budget
    from runtime.serve.store import StoreSettings

KEY_PREFIX = "sk-byoc-"

NameArg = Annotated[str, typer.Argument(help="The key's name (the access log's key=NAME).")]
StoreOpt = Annotated[str, typer.Option("--store", help="The gateways' store: redis://HOST:PORT or rediss://.")]
PasswordOpt = Annotated[Path | None, typer.Option("--store-password-file", help="File holding the store's AUTH token.")]
CaOpt = Annotated[Path | None, typer.Option("--store-ca-file", help="PEM CA of the store's TLS certificate.")]
PrefixOpt = Annotated[str, typer.Option("--store-prefix", help="The gateways' --store-prefix.")]
RpmOpt = Annotated[int | None, typer.Option("--rpm", help="Requests per minute (0: the gateway's default).")]
TpmOpt = Annotated[int | None, typer.Option("--tpm", help="Tokens (prompt + completion) per minute (0: none).")]
ConcurrencyOpt = Annotated[
    int | None, typer.Option("--max-concurrency", help="Requests in progress at once (0: none).")
]
BudgetTokensOpt = Annotated[
    int | None, typer.Option("--budget-tokens", help="Tokens the key may use per --budget-period.")
]
BudgetPeriodOpt = Annotated[str | None, typer.Option("--budget-period", help="day or month (UTC calendar) [month].")]


def _connect(store: str, password_file: Path | None, ca_file: Path | None, prefix: str) -> tuple[Any, StoreSettings]:
    from byoc.extras import require

    require("store", "byoc keys")
    from runtime.serve.store import StoreSettings, connect

    settings = StoreSettings(store, password_file, ca_file, prefix).check()
    return connect(settings), settings


def _check_name(name: str) -> None:
    from runtime.serve.keys import key_name_problem

    problem = key_name_problem(name)
    if problem:
        raise ByocError("NAME", problem, "e.g. ci-pipeline: the access log writes key=NAME")


def _limits(
    rpm: int | None, tpm: int | None, max_concurrency: int | None, tokens: int | None, period: str | None
) -> tuple[dict[str, int | None], Budget | None]:
    """The limits given as flags, checked (exit 2 naming the flag)."""
    from runtime.serve.keys import BUDGET_MAX, BUDGET_PERIODS, Budget, limit_problem

    limits = {"rpm": rpm, "tpm": tpm, "max_concurrency": max_concurrency}
    for field, value in limits.items():
        if value is not None and limit_problem(field, value):
            flag = "--" + field.replace("_", "-")
            raise ByocError(flag, str(limit_problem(field, value)).replace(field, flag, 1), f"e.g. {flag} 60")
    if period is not None and period not in BUDGET_PERIODS:
        raise ByocError("--budget-period", f"{period!r} is not a budget period", "day or month (UTC calendar)")
    if tokens is None:
        if period is not None:
            raise ByocError("--budget-period", "a period without --budget-tokens", "give --budget-tokens N too")
        return limits, None
    if not 1 <= tokens <= BUDGET_MAX:
        raise ByocError("--budget-tokens", f"must be a whole number from 1 to {BUDGET_MAX:,}", "e.g. 1000000")
    return limits, Budget(tokens, period or "month")


def _new_key(name: str, limits: dict[str, int | None], budget: Budget | None) -> tuple[str, ApiKey]:
    import secrets

    from runtime.serve.keys import ApiKey, digest

    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = ApiKey(
        name, digest(key), limits["rpm"], limits["max_concurrency"], kind="store", tpm=limits["tpm"], budget=budget
    )
    return key, entry


def _existing(entry: dict[str, Any]) -> tuple[dict[str, int | None], Budget | None]:
    from runtime.serve.keys import Budget

    limits = {f: entry.get(f) for f in ("rpm", "tpm", "max_concurrency")}
    budget = entry.get("budget")
    return limits, Budget(int(budget["tokens"]), str(budget["period"])) if isinstance(budget, dict) else None


def _issued(key: str, api_key: ApiKey, version: int, output: Output, verb: str) -> None:
    """The key, once: stdout only (never a file, never a log); what to do with it on stderr."""
    if output == Output.json:
        print_json({**api_key.entry(), "key": key, "version": version})
    else:
        print(key)
    print(
        f"key {api_key.name} {verb}: every gateway replica takes it within seconds; "
        "store it now, it is not shown again",
        file=sys.stderr,
    )


def create(
    name: NameArg,
    store: StoreOpt,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = "byoc:",
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    budget_tokens: BudgetTokensOpt = None,
    budget_period: BudgetPeriodOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Make a new API key, store its SHA-256 and limits, and print the key once."""
    with reporting(output):
        _check_name(name)
        limits, budget = _limits(rpm, tpm, max_concurrency, budget_tokens, budget_period)
        client, settings = _connect(store, store_password_file, store_ca_file, store_prefix)
        from runtime.serve.store import read_entries, read_file_key_names, write_entry

        with client:
            found = read_entries(client, settings).get(name)
            if found is not None and not found.get("revoked"):
                raise ByocError("NAME", f"a key named {name} exists", f"`byoc keys rotate {name}` gives it a new key")
            if found is None and name in read_file_key_names(client, settings):
                raise ByocError(
                    "NAME", f"{name} names a key of the gateways' keys file", "choose another name, or revoke it first"
                )
            key, api_key = _new_key(name, limits, budget)
            version = write_entry(client, settings, name, api_key.entry())
    _issued(key, api_key, version, output, "created")


def rotate(
    name: NameArg,
    store: StoreOpt,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = "byoc:",
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    budget_tokens: BudgetTokensOpt = None,
    budget_period: BudgetPeriodOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Give a stored key a new secret (the old one stops working within seconds); its limits stay unless given."""
    with reporting(output):
        _check_name(name)
        given, budget = _limits(rpm, tpm, max_concurrency, budget_tokens, budget_period)
        client, settings = _connect(store, store_password_file, store_ca_file, store_prefix)
        from runtime.serve.store import read_entries, write_entry

        with client:
            found = read_entries(client, settings).get(name)
            if found is None or found.get("revoked"):
                raise ByocError(
                    "NAME", f"no key named {name} in the store", "`byoc keys list` shows them; `create` makes one"
                )
            limits, kept = _existing(found)
            limits.update({k: v for k, v in given.items() if v is not None})
            key, api_key = _new_key(name, limits, budget or kept)
            version = write_entry(client, settings, name, api_key.entry())
    _issued(key, api_key, version, output, "rotated")


def revoke(
    name: NameArg,
    store: StoreOpt,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = "byoc:",
    output: OutputOpt = Output.text,
) -> None:
    """Revoke a key (from the store or the gateways' keys file): every replica answers it 401 within seconds."""
    with reporting(output):
        _check_name(name)
        client, settings = _connect(store, store_password_file, store_ca_file, store_prefix)
        from runtime.serve.store import read_entries, read_file_key_names, write_entry

        with client:
            found = read_entries(client, settings).get(name)
            if found is None and name not in read_file_key_names(client, settings):
                raise ByocError("NAME", f"no key named {name}", "`byoc keys list` shows the keys")
            already = found is not None and bool(found.get("revoked"))
            version = write_entry(client, settings, name, {"name": name, "revoked": True})
    if output == Output.json:
        print_json({"name": name, "revoked": True, "version": version})
    else:
        print(
            f"key {name} {'was already revoked' if already else 'revoked'}: "
            "every gateway replica refuses it within seconds"
        )


def list_keys(
    store: StoreOpt,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = "byoc:",
    output: OutputOpt = Output.text,
) -> None:
    """The keys in the store and the names in the gateways' keys files, with their limits and budget use."""
    with reporting(output):
        client, settings = _connect(store, store_password_file, store_ca_file, store_prefix)
        from runtime.serve.store import budget_used, read_entries, read_file_key_names

        with client:
            entries = read_entries(client, settings)
            rows: list[dict[str, Any]] = []
            for name in sorted(set(entries) | read_file_key_names(client, settings)):
                entry = entries.get(name)
                row: dict[str, Any] = {
                    "name": name,
                    "source": "file" if entry is None or (entry.get("revoked") and "sha256" not in entry) else "store",
                }
                row["revoked"] = bool(entry and entry.get("revoked"))
                if entry and not row["revoked"]:
                    for field in ("rpm", "tpm", "max_concurrency", "budget"):
                        row[field] = entry.get(field)
                    if isinstance(entry.get("budget"), dict):
                        row["budget_used"] = budget_used(client, settings, name, str(entry["budget"]["period"]))
                rows.append(row)
    if output == Output.json:
        print_json(rows)
        return
    print(f"{'NAME':<24} {'SOURCE':<6} {'STATE':<8} {'RPM':>8} {'TPM':>10} {'CONC':>6}  BUDGET")
    for row in rows:
        budget = row.get("budget")
        spent = f"{row.get('budget_used', 0)}/{budget['tokens']} per {budget['period']}" if budget else "-"

        rpm, tpm, conc = ("-" if row.get(f) is None else str(row[f]) for f in ("rpm", "tpm", "max_concurrency"))
        print(
            f"{row['name']:<24} {row['source']:<6} {'revoked' if row['revoked'] else 'active':<8} "
            f"{rpm:>8} {tpm:>10} {conc:>6}  {spent}"
        )


def register(app: typer.Typer) -> None:
    keys = typer.Typer(
        rich_markup_mode=None,
        help="API keys in the gateways' shared store: create, list, revoke, rotate (no restart).",
        no_args_is_help=True,
    )
    app.add_typer(keys, name="keys")
    keys.command("create")(create)
    keys.command("list")(list_keys)
    keys.command("revoke")(revoke)
    keys.command("rotate")(rotate)
