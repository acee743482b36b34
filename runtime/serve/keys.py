"""API keys: loaded once as SHA-256 digests, checked in constant time, never stored or logged in plain text.

The keys file is one of two formats that cannot be mistaken for each other:

- YAML of hashed keys, as `byoc serve hash-key` prints them: a list of entries, so that `hash-key >> keys.yaml`
  adds one (a top-level `keys:` holding the same list is read too):

      - {name: ci, sha256: 9f86d0...0f00a08, rpm: 600, tpm: 200000, max_concurrency: 8,
         budget: {tokens: 50000000, period: month}}

- plain keys, one per line (development only): the gateway hashes each line at load and keeps only the digest.
  A line must look like a key: one word of at least 16 characters, not 64 hex digits (that is a digest). A file
  with any other line, or YAML of any other shape, is refused: read as plain keys, a file of hashes would make
  every line of it a valid key.

A file that yields no key refuses to start the gateway (exit 2).

Keys are random secrets with plenty of entropy, so one SHA-256 per request (under a microsecond) is the right cost:
a slow password hash would only make every request slower without making a key harder to guess.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from byoc.errors import ByocError

HEX64 = re.compile(r"^[0-9a-f]{64}$")
# A key's name is the access log's `key=NAME`, one of its space-separated field=value pairs: so it takes the rule of a
# non-empty Kubernetes label value (IsValidLabelValue), a charset any log parser reads as one field. Letters, digits,
# '-', '_' and '.', from and to a letter or digit, at most 63 characters.
KEY_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
KEY_NAME_RULE = "letters, digits, '-', '_' and '.', from and to a letter or digit, at most 63 characters"


def key_name_problem(name: str) -> str | None:
    """Why `name` cannot name an API key (it appears in the access log as `key=NAME`), or None."""
    if len(name) > 63:
        return f"{name[:63]!r}... is {len(name)} characters long, above 63"
    if not KEY_NAME.match(name):
        return f"{name!r} is not a key name: {KEY_NAME_RULE}"
    return None


# The highest value each per-key limit takes: above these a limit is a typo, not a limit (a key allowed a billion
# requests a minute has none). Shared by the keys file, the store's entries and `byoc keys`.
LIMIT_MAX = {"rpm": 100_000_000, "tpm": 100_000_000_000, "max_concurrency": 1_000_000}
BUDGET_MAX = 10**15  # tokens in one period
BUDGET_PERIODS = ("day", "month")  # UTC calendar periods
LIMIT_FIELDS = ("rpm", "max_concurrency", "tpm")
ENTRY_FIELDS = ("name", "sha256", *LIMIT_FIELDS, "budget")


@dataclass(frozen=True)
class Budget:
    """Tokens (prompt + completion) a key may use in one UTC calendar period (`day` or `month`)."""

    tokens: int
    period: str  # "day" or "month"

    def as_dict(self) -> dict[str, object]:
        return {"tokens": self.tokens, "period": self.period}


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    rpm: int | None = None  # None: the gateway's --rate-limit-rpm
    max_concurrency: int | None = None  # None: no per-key limit
    kind: str = "sha256"  # "sha256" (a hashed entry), "plaintext" (a line hashed at load) or "store" (byoc keys)
    tpm: int | None = None  # prompt + completion tokens per minute; None: no per-key limit
    budget: Budget | None = None  # None: no budget

    def entry(self) -> dict[str, object]:
        """The hashed entry, as the keys file and the store hold it (never the key)."""
        entry: dict[str, object] = {"name": self.name, "sha256": self.digest.hex()}
        for name in LIMIT_FIELDS:
            if getattr(self, name) is not None:
                entry[name] = getattr(self, name)
        if self.budget is not None:
            entry["budget"] = self.budget.as_dict()
        return entry


ANONYMOUS = ApiKey("anonymous", b"")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def check_key_name(name: str) -> None:
    """Raise ByocError naming `--name` (of `byoc serve hash-key`) for a name the gateway would refuse to load."""
    problem = key_name_problem(name)
    if problem:
        raise ByocError("--name", problem, "e.g. --name ci-pipeline: the access log writes key=NAME")


def hash_key_entry(
    name: str,
    key: str,
    rpm: int | None = None,
    max_concurrency: int | None = None,
    *,
    tpm: int | None = None,
    budget: Budget | None = None,
) -> str:
    """The YAML list entry for one key, as `byoc serve hash-key` prints it (the key itself never appears).

    Raises ByocError (`--name`) for a name the gateway would refuse to load."""
    check_key_name(name)
    entry = ApiKey(name, digest(key), rpm, max_concurrency, tpm=tpm, budget=budget).entry()
    return yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=1000)


def limit_problem(field: str, value: object) -> str | None:
    """Why `value` cannot be the per-key limit `field` (rpm, tpm, max_concurrency), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LIMIT_MAX[field]:
        return f"{field} must be a whole number from 0 to {LIMIT_MAX[field]:,} (0: no limit)"
    return None


def budget_problem(value: object) -> str | None:
    """Why `value` cannot be a key's `budget` ({tokens: N, period: day|month}), or None."""
    if not isinstance(value, dict) or set(value) != {"tokens", "period"}:
        return "budget must be {tokens: N, period: day|month}"
    tokens, period = value["tokens"], value["period"]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= BUDGET_MAX:
        return f"budget.tokens must be a whole number from 1 to {BUDGET_MAX:,}"
    if period not in BUDGET_PERIODS:
        return f"budget.period {period!r} is not a period: day or month (UTC calendar)"
    return None


def _limit(entry: dict[str, object], field: str, where: str) -> int | None:
    value = entry.get(field)
    if value is None:
        return None
    problem = limit_problem(field, value)
    if problem:
        raise ByocError("--api-keys", f"{where}: {problem}", f"e.g. {field}: 60")
    assert isinstance(value, int)
    return value


def _budget(entry: dict[str, object], where: str) -> Budget | None:
    value = entry.get("budget")
    if value is None:
        return None
    problem = budget_problem(value)
    if problem:
        raise ByocError("--api-keys", f"{where}: {problem}", "e.g. budget: {tokens: 1000000, period: month}")
    assert isinstance(value, dict)
    return Budget(int(value["tokens"]), str(value["period"]))


def _from_yaml(entries: object, path: Path) -> list[ApiKey]:
    if not isinstance(entries, list):
        raise ByocError("--api-keys", f"{path}: `keys` must be a list", "run `byoc serve hash-key` for an entry")
    keys: list[ApiKey] = []
    for index, entry in enumerate(entries, start=1):
        where = f"{path}: key {index}"
        if not isinstance(entry, dict):
            raise ByocError("--api-keys", f"{where} is not a mapping", "use {name: ..., sha256: ...}")
        unknown = set(entry) - set(ENTRY_FIELDS)
        if unknown:
            raise ByocError(
                "--api-keys",
                f"{where} has unknown field {sorted(unknown)[0]!r}",
                "fields: " + ", ".join(ENTRY_FIELDS),
            )
        name, hexdigest = entry.get("name"), str(entry.get("sha256", "")).lower()
        if name is None or (isinstance(name, str) and not name.strip()):
            raise ByocError(
                "--api-keys", f"{where} has no name", "give every key a name (it appears in the access log)"
            )
        if not isinstance(name, str):
            raise ByocError("--api-keys", f"{where}: name {name!r} is not text", f'quote it: name: "{name}"')
        problem = key_name_problem(name)
        if problem:
            raise ByocError(
                "--api-keys", f"{where}: {problem}", "rename it (the access log writes `key=NAME`, space-separated)"
            )
        if not HEX64.match(hexdigest):
            raise ByocError(
                "--api-keys",
                f"{where} ({name}) has no valid sha256",
                "the hex SHA-256 of the key: `byoc serve hash-key --name NAME < key.txt`",
            )
        rpm = _limit(entry, "rpm", where)
        keys.append(
            ApiKey(
                name,
                bytes.fromhex(hexdigest),
                rpm,
                _limit(entry, "max_concurrency", where),
                tpm=_limit(entry, "tpm", where),
                budget=_budget(entry, where),
            )
        )
    return keys


MIN_PLAIN_KEY = 16  # as `byoc serve hash-key` requires
YAML_HINT = "YAML entries come from `byoc serve hash-key --name NAME < key.txt` (append them: >> keys.yaml)"


def _plain_keys(text: str, path: Path) -> list[ApiKey]:
    keys: list[ApiKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}: line {number}"
        if any(c.isspace() for c in line) or line.startswith(("-", "{", "[")) or line.endswith(":"):
            raise ByocError("--api-keys", f"{where} is neither a plain key nor valid YAML of hashed keys", YAML_HINT)
        if HEX64.match(line.lower()):
            raise ByocError(
                "--api-keys",
                f"{where} is a SHA-256 digest, not a key: read as a plain key, the digest itself would be the key",
                "put digests in YAML entries: " + YAML_HINT,
            )
        if any(not c.isprintable() for c in line):
            # a control character no client can send in an Authorization header: the key could never be used
            raise ByocError("--api-keys", f"{where} holds a control character, and a key is one word", YAML_HINT)
        if len(line) < MIN_PLAIN_KEY:
            raise ByocError("--api-keys", f"{where} is shorter than {MIN_PLAIN_KEY} characters", "use a random key")
        keys.append(ApiKey(f"key-{number}", digest(line), kind="plaintext"))
    return keys


def load_keys(path: Path) -> list[ApiKey]:
    """The keys of a keys file (either format above).

    Raises ByocError (the CLI's exit 2) when the file cannot be read, mixes the formats, has a malformed entry, a
    duplicate name or key, or yields no key at all.
    """
    from byoc.yamlio import DuplicateKeyError, ExpansionError, load_unique, read_user_file

    # A byte-order mark (Windows editors write one) is not part of the first key.
    text = read_user_file(path, "--api-keys", "the keys file").removeprefix("\ufeff")
    try:
        data = load_unique(text)
    except (DuplicateKeyError, ExpansionError) as exc:
        raise ByocError("--api-keys", f"{path}: {exc}", "write each key's entry once, without YAML aliases") from None
    except yaml.YAMLError:
        data = None  # plain keys can contain characters YAML dislikes: the line checks below decide
    if isinstance(data, list):
        keys = _from_yaml(data, path)
    elif isinstance(data, dict):
        if set(data) != {"keys"}:
            raise ByocError("--api-keys", f"{path} is YAML without a list of keys", YAML_HINT)
        keys = _from_yaml(data["keys"] if data["keys"] is not None else [], path)
    else:
        keys = _plain_keys(text, path)
    if not keys:
        raise ByocError("--api-keys", f"{path} holds no keys", "add hashed entries: " + YAML_HINT)
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ByocError("--api-keys", f"{path}: two keys share a name", "key names must be unique")
    if len({k.digest for k in keys}) != len(keys):
        raise ByocError("--api-keys", f"{path}: the same key appears twice", "remove the duplicate")
    return keys


class KeyRing:
    """Bearer token -> ApiKey. The digest indexes a dict (a lookup by the hash of a secret tells an attacker
    nothing about the secret); the final comparison is `hmac.compare_digest`, constant time."""

    def __init__(self, keys: list[ApiKey] | None) -> None:
        self.enabled = keys is not None
        self._by_digest = {k.digest: k for k in keys or []}

    def replace(self, keys: list[ApiKey]) -> None:
        """Serve `keys` from now on (the keys file's merged with the store's): one assignment, so a request never
        sees half a change."""
        self._by_digest = {k.digest: k for k in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def by_name(self, name: str) -> ApiKey | None:
        """The key named `name` (the owner of a batch, runtime/serve/batch/), or None."""
        for key in self._by_digest.values():
            if key.name == name:
                return key
        return None

    def describe(self) -> str:
        """`3 API keys (2 sha256, 1 plaintext)`: for the start-up log line."""
        kinds = [k.kind for k in self._by_digest.values()]
        counts = f"{kinds.count('sha256')} sha256, {kinds.count('plaintext')} plaintext"
        if kinds.count("store"):
            counts += f", {kinds.count('store')} from the store"
        return f"{len(kinds)} API keys ({counts})"

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        if not self.enabled:
            return ANONYMOUS
        # The auth scheme is case-insensitive (RFC 7235 section 2.1): "bearer" and "BEARER" are Bearer too.
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        presented = digest(authorization[7:].strip())
        found = self._by_digest.get(presented)
        if found is None or not hmac.compare_digest(found.digest, presented):
            return None
        return found
