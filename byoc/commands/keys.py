"""`byoc keys create|list|revoke|rotate`: API keys kept in the gateways' shared store (`--store`), picked up by every
gateway replica within seconds (each looks at the keys' version on its heartbeat, every second), revocation
included, without a restart. The gateways' keys file stays the bootstrap; a key in the store overrides a file key of
the same name, and `revoke` works on both.

Only hashed entries reach the store (name, sha256, rpm, tpm, max_concurrency, budget). `create` and `rotate` make the
key here (`secrets.token_urlsafe`, 256 bits), send only its SHA-256, and print the key once on stdout: it is never
written to any file or log, and cannot be shown again.

`-f byoc.yaml` instead of `--store` reaches a deployment's private store (ElastiCache, Memorystore: reachable only
from the cluster) through one of its running gateway pods: `kubectl exec` runs the same command there with the
gateway's own `--store` flags and `--output json`, and the answer is shown here (`byoc usage -f` too). It needs the
kubeconfig `byoc up` saved and, for its identity, RBAC to list pods and create pods/exec in the namespace
`byoc-<name>`. The key is still made in the pod and comes back only on the exec's stdout.

Only typer is imported here: the Redis client loads inside the command that runs, so `byoc --help` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, print_json, reporting
from byoc.errors import ByocError, ByocFailure

if TYPE_CHECKING:
    from runtime.serve.keys import ApiKey, Budget
    from runtime.serve.store import StoreSettings

KEY_PREFIX = "sk-byoc-"

NameArg = Annotated[str, typer.Argument(help="The key's name (the access log's key=NAME).")]
DEFAULT_PREFIX = "byoc:"
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="The gateways' store: redis://HOST:PORT or rediss:// (or give -f).")
]
FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="The deployment's byoc.yaml: reach its store through a running gateway pod (kubectl exec; or --store).",
    ),
]
PasswordOpt = Annotated[Path | None, typer.Option("--store-password-file", help="File holding the store's AUTH token.")]
CaOpt = Annotated[Path | None, typer.Option("--store-ca-file", help="PEM CA of the store's TLS certificate.")]
PrefixOpt = Annotated[str | None, typer.Option("--store-prefix", help="The gateways' --store-prefix [byoc:].")]
# The gateway's flags that say how it reaches the store (stacks/k8s/serving.py writes them into its command).
GATEWAY_STORE_FLAGS = ("--store", "--store-password-file", "--store-ca-file", "--store-prefix")
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


def which_store(store: str | None, file: Path | None, store_file_flags: dict[str, object]) -> None:
    """Exactly one of --store and -f; the --store-* file flags only with --store (with -f the gateway's own apply).
    Raises ByocError naming the flags."""
    if store is not None and file is not None:
        raise ByocError(
            "-f",
            "-f and --store both name the store",
            "give one: -f byoc.yaml (through a gateway pod) or --store URL (a store this machine reaches)",
        )
    if store is None and file is None:
        raise ByocError(
            "--store",
            "no store given",
            "give -f byoc.yaml (the deployment's store, through a gateway pod) or --store redis[s]://HOST:PORT",
        )
    if file is not None:
        for flag, value in store_file_flags.items():
            if value is not None:
                raise ByocError(flag, "goes with --store, not -f", "drop it: with -f the gateway's own settings apply")


def _gateway_pod(file: Path) -> tuple[Any, str, str, list[str]]:
    """The deployment's cluster, namespace, a running gateway pod and that pod's gateway command.

    Raises ByocError (exit 2) naming -f when the deployment is not in the registry or has no kubeconfig, ByocFailure
    (exit 1) when kubectl cannot list the pods or no gateway pod runs."""
    from byoc.cluster_api import ClusterUnreachable, Kubectl
    from byoc.names import resource_name
    from byoc.registry import Registry
    from byoc.spec import load_spec

    name = load_spec(file).name
    registry = Registry()
    try:
        record = registry.get(name)
    finally:
        registry.close()
    if record is None:
        raise ByocError(
            "-f",
            f"no deployment named {name} in the registry ({registry.home})",
            f"`byoc up -f {file}` deploys it and `byoc status` lists the deployments; or give --store URL",
        )
    if len(record.regions) > 1:
        # Every region has its own store, and a spilled request carries the client's key to the peer region, so a
        # key must be the same in every region: `-f` would reach one region's gateway only (and `keys create` makes
        # its random key inside that pod). Refused rather than half done.
        raise ByocError(
            "-f",
            f"deployment {name} runs in {len(record.regions)} regions ({', '.join(record.regions)}), each with its "
            "own store; -f reaches one region's gateway, and a key must be the same in every region",
            "keep the keys in the keys file, created as the same Secret in every region's namespace (docs/"
            "multi-region.md, 'API keys and usage'), or run the command with --store URL against each region's store",
        )
    kubeconfig = record.outputs.get("kubeconfig")
    if not kubeconfig or not Path(str(kubeconfig)).is_file():
        raise ByocError(
            "-f",
            f"deployment {name} has no cluster to reach (state {record.state.value}, no kubeconfig saved)",
            f"`byoc up -f {file}` creates it; or give --store URL",
        )
    namespace = resource_name(name)
    try:
        cluster = Kubectl.for_kubeconfig(str(kubeconfig))
        pods = cluster.list("pods", namespace)
    except ClusterUnreachable as exc:
        raise ByocFailure(
            "-f",
            f"cannot list the pods of deployment {name}: {exc}",
            f"kubectl must reach the cluster, and your identity needs list on pods in namespace {namespace}",
        ) from None
    # a Deployment's pods are named <deployment>-<replica set hash>-<pod hash>
    prefix = resource_name(name, "gateway") + "-"
    running = [
        pod
        for pod in pods
        if str(pod.get("metadata", {}).get("name", "")).startswith(prefix)
        and pod.get("status", {}).get("phase") == "Running"
        and not pod.get("metadata", {}).get("deletionTimestamp")
    ]

    def ready(pod: dict[str, Any]) -> bool:
        statuses = pod.get("status", {}).get("containerStatuses", [])
        return any(s.get("name") == "gateway" and s.get("ready") for s in statuses)

    running.sort(key=lambda pod: not ready(pod))  # a ready one first, a starting one if that is all there is
    for pod in running:
        for container in pod.get("spec", {}).get("containers", []):
            if container.get("name") == "gateway":
                command = [str(word) for word in (*container.get("command", []), *container.get("args", []))]
                return cluster, namespace, str(pod["metadata"]["name"]), command
    raise ByocFailure(
        "-f",
        f"no running gateway pod of deployment {name} in namespace {namespace}",
        f"`byoc status {name}` shows its health: the store is reached through a running gateway",
    )


def run_in_gateway(file: Path, args: list[str], flags: tuple[str, ...]) -> Any:
    """Run `byoc ARGS --output json` in a running gateway pod of the deployment `file` names, with the gateway's own
    values of `flags` (of GATEWAY_STORE_FLAGS), and return the parsed JSON it prints.

    The inner command's error (its JSON error object, exit 2 or 1) is raised here as the same error: field, message,
    hint, exit code. Raises ByocError naming -f for a deployment without a shared store, ByocFailure when the pod
    cannot run it."""
    from byoc.cluster_api import ClusterUnreachable

    cluster, namespace, pod, command = _gateway_pod(file)
    given: dict[str, str] = {}
    for at, word in enumerate(command):
        flag, equals, value = word.partition("=")
        if flag in GATEWAY_STORE_FLAGS and (equals or at + 1 < len(command)):
            given[flag] = value if equals else command[at + 1]
    if "--store" not in given:
        raise ByocError(
            "-f",
            f"gateway pod {pod} keeps no shared store (gateway.store: none): its keys are its keys file",
            "set gateway.store: managed in the spec and run `byoc up`",
        )
    inner = ["byoc", *args]
    for flag in flags:
        if flag in given:
            inner += [flag, given[flag]]
    try:
        status, stdout = cluster.exec(namespace, pod, "gateway", [*inner, "--output", "json"])
    except ClusterUnreachable as exc:
        raise ByocFailure(
            "-f",
            f"could not run byoc in gateway pod {pod}: {exc}",
            f"your identity needs create on pods/exec in namespace {namespace}",
        ) from None
    try:
        data = json.loads(stdout)
    except ValueError:
        data = None
    if status != 0:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            passed = ByocError(str(error.get("field", "")), str(error.get("message", "")), str(error.get("hint", "")))
            passed.exit_code = int(error.get("exit_code", status))
            raise passed
        raise ByocFailure("-f", f"byoc in gateway pod {pod} exited {status}", f"`kubectl logs -n {namespace} {pod}`")
    if data is None:
        raise ByocFailure(
            "-f", f"byoc in gateway pod {pod} answered no JSON", "its runtime image may predate this byoc: `byoc up`"
        )
    return data


def _limit_flags(
    rpm: int | None, tpm: int | None, max_concurrency: int | None, tokens: int | None, period: str | None
) -> list[str]:
    """The limit flags given, for the command run in the gateway pod."""
    given = {
        "--rpm": rpm,
        "--tpm": tpm,
        "--max-concurrency": max_concurrency,
        "--budget-tokens": tokens,
        "--budget-period": period,
    }
    return [word for flag, value in given.items() if value is not None for word in (flag, str(value))]


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


def _issued(issued: dict[str, Any], output: Output, verb: str) -> None:
    """The key (`issued`: the stored entry, key and version), once: stdout only (never a file, never a log); what to
    do with it on stderr."""
    if output == Output.json:
        print_json(issued)
    else:
        print(issued["key"])
    print(
        f"key {issued['name']} {verb}: every gateway replica takes it within seconds; "
        "store it now, it is not shown again",
        file=sys.stderr,
    )


def _file_flags(password_file: Path | None, ca_file: Path | None, prefix: str | None) -> dict[str, object]:
    return {"--store-password-file": password_file, "--store-ca-file": ca_file, "--store-prefix": prefix}


def create(
    name: NameArg,
    store: StoreOpt = None,
    file: FileOpt = None,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    budget_tokens: BudgetTokensOpt = None,
    budget_period: BudgetPeriodOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Make a new API key, store its SHA-256 and limits, and print the key once."""
    with reporting(output):
        which_store(store, file, _file_flags(store_password_file, store_ca_file, store_prefix))
        _check_name(name)
        limits, budget = _limits(rpm, tpm, max_concurrency, budget_tokens, budget_period)
        if file is not None:
            flags = _limit_flags(rpm, tpm, max_concurrency, budget_tokens, budget_period)
            issued = run_in_gateway(file, ["keys", "create", name, *flags], GATEWAY_STORE_FLAGS)
        else:
            client, settings = _connect(str(store), store_password_file, store_ca_file, store_prefix or DEFAULT_PREFIX)
            from runtime.serve.store import read_entries, read_file_key_names, write_entry

            with client:
                found = read_entries(client, settings).get(name)
                if found is not None and not found.get("revoked"):
                    raise ByocError(
                        "NAME", f"a key named {name} exists", f"`byoc keys rotate {name}` gives it a new key"
                    )
                if found is None and name in read_file_key_names(client, settings):
                    raise ByocError(
                        "NAME",
                        f"{name} names a key of the gateways' keys file",
                        "choose another name, or revoke it first",
                    )
                key, api_key = _new_key(name, limits, budget)
                version = write_entry(client, settings, name, api_key.entry())
            issued = {**api_key.entry(), "key": key, "version": version}
    _issued(issued, output, "created")


def rotate(
    name: NameArg,
    store: StoreOpt = None,
    file: FileOpt = None,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    budget_tokens: BudgetTokensOpt = None,
    budget_period: BudgetPeriodOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Give a stored key a new secret (the old one stops working within seconds); its limits stay unless given."""
    with reporting(output):
        which_store(store, file, _file_flags(store_password_file, store_ca_file, store_prefix))
        _check_name(name)
        given, budget = _limits(rpm, tpm, max_concurrency, budget_tokens, budget_period)
        if file is not None:
            flags = _limit_flags(rpm, tpm, max_concurrency, budget_tokens, budget_period)
            issued = run_in_gateway(file, ["keys", "rotate", name, *flags], GATEWAY_STORE_FLAGS)
        else:
            client, settings = _connect(str(store), store_password_file, store_ca_file, store_prefix or DEFAULT_PREFIX)
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
            issued = {**api_key.entry(), "key": key, "version": version}
    _issued(issued, output, "rotated")


def revoke(
    name: NameArg,
    store: StoreOpt = None,
    file: FileOpt = None,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Revoke a key (from the store or the gateways' keys file): every replica answers it 401 within seconds."""
    with reporting(output):
        which_store(store, file, _file_flags(store_password_file, store_ca_file, store_prefix))
        _check_name(name)
        if file is not None:
            revoked = run_in_gateway(file, ["keys", "revoke", name], GATEWAY_STORE_FLAGS)
        else:
            client, settings = _connect(str(store), store_password_file, store_ca_file, store_prefix or DEFAULT_PREFIX)
            from runtime.serve.store import read_entries, read_file_key_names, write_entry

            with client:
                found = read_entries(client, settings).get(name)
                if found is None and name not in read_file_key_names(client, settings):
                    raise ByocError("NAME", f"no key named {name}", "`byoc keys list` shows the keys")
                already = found is not None and bool(found.get("revoked"))
                version = write_entry(client, settings, name, {"name": name, "revoked": True})
            revoked = {"name": name, "revoked": True, "version": version, "already_revoked": already}
    if output == Output.json:
        print_json(revoked)
    else:
        print(
            f"key {name} {'was already revoked' if revoked.get('already_revoked') else 'revoked'}: "
            "every gateway replica refuses it within seconds"
        )


def list_keys(
    store: StoreOpt = None,
    file: FileOpt = None,
    store_password_file: PasswordOpt = None,
    store_ca_file: CaOpt = None,
    store_prefix: PrefixOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """The keys in the store and the names in the gateways' keys files, with their limits and budget use."""
    with reporting(output):
        which_store(store, file, _file_flags(store_password_file, store_ca_file, store_prefix))
        if file is not None:
            rows: list[dict[str, Any]] = run_in_gateway(file, ["keys", "list"], GATEWAY_STORE_FLAGS)
        else:
            rows = _stored_keys(str(store), store_password_file, store_ca_file, store_prefix or DEFAULT_PREFIX)
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


def _stored_keys(store: str, password_file: Path | None, ca_file: Path | None, prefix: str) -> list[dict[str, Any]]:
    client, settings = _connect(store, password_file, ca_file, prefix)
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
    return rows


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
