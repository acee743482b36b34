"""Per-key limits, budgets and keys shared by three gateway replicas through one Redis (Debian's `redis-server` on
127.0.0.1), as a client sees them: whatever replica a request hits, a key's rpm, tpm, concurrency and budget hold
within 5%; a gateway killed with -9 gives its concurrency slots back after the lease; `byoc keys` changes reach
every replica within seconds; and with the store gone no request fails, each replica enforces its share.

The engine is the stand-in (tests/runtime/standin.py): every answer uses 11 prompt + 5 completion tokens.
"""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.conftest import ROOT
from tests.runtime.conftest import MODEL, Server, free_port, http, metric, start_gateway, wait_for
from tests.runtime.standin import PROMPT_TOKENS, StandInEngine

TOKENS = PROMPT_TOKENS + 5  # what the stand-in's every answer uses
LEASE = 2.0  # --store-lease-seconds: how long a killed gateway's slots stay taken
KEYS = {
    "rpm60": ("sk-rpm60-4b7d1e9a2c5f8b3d6e0a", {"rpm": 60}),
    "tpm": ("sk-tpm-8e2c5a9d3f6b1e4c7a0d", {"tpm": 1600}),  # 100 answers a minute
    "conc3": ("sk-conc3-1f4a7d0c3e6b9a2d5c8f", {"max_concurrency": 3}),
    "budget": ("sk-budget-6d9b2e5a8c1f4d7a0e3b", {"budget": {"tokens": 50 * TOKENS, "period": "day"}}),
    "share": ("sk-share-3c6f9a2d5b8e1c4f7a0d", {"rpm": 30, "max_concurrency": 3}),
    "killed": ("sk-killed-9a2d5c8f1b4e7a0d3c6f", {"max_concurrency": 1}),
    "burst": ("sk-burst-5e8b1d4a7c0f3e6b9d2a", {"budget": {"tokens": 10 * TOKENS, "period": "month"}}),
}
# 44 characters: the gateway's estimate (4 characters a token) is the stand-in's PROMPT_TOKENS, 11
ELEVEN_TOKENS = "one two three four five six seven eight nine"


class RedisServer:
    """`redis-server` on 127.0.0.1 with nothing written to disk; stopped (or killed) and started on the same port."""

    def __init__(self, folder: Path) -> None:
        # fails, never skips, without it (as the Prometheus tests do): scripts/test.sh installs it
        assert shutil.which("redis-server"), "Debian's redis-server is not installed: run scripts/test.sh"
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_for(lambda: _pings(client), timeout=10, what="redis-server to answer")
        client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.RedisError:
        return False


def byoc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byoc", *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def standin() -> Iterator[StandInEngine]:
    engine = StandInEngine(model=MODEL)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.serve.keys import ApiKey, Budget, digest

    entries = []
    for name, (key, limits) in KEYS.items():
        budget = limits.get("budget")
        entries.append(
            ApiKey(
                name,
                digest(key),
                limits.get("rpm"),  # type: ignore[arg-type]
                limits.get("max_concurrency"),  # type: ignore[arg-type]
                tpm=limits.get("tpm"),  # type: ignore[arg-type]
                budget=Budget(**budget) if isinstance(budget, dict) else None,
            ).entry()
        )
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    path.write_text(json.dumps(entries))  # JSON is YAML
    return path


def _gateway(folder: Path, engine: StandInEngine, store: RedisServer, keys: Path) -> Server:
    return start_gateway(
        folder,
        [engine.url],
        "--store",
        store.url,
        "--store-lease-seconds",
        str(LEASE),
        "--health-interval",
        "0.5",
        keys=keys,
    )


@pytest.fixture(scope="module")
def gateways(
    store: RedisServer, standin: StandInEngine, keys_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    folder = tmp_path_factory.mktemp("gateways")
    servers = [_gateway(folder, standin, store, keys_file) for _ in range(3)]
    wait_for(
        lambda: all(metric(s.metrics(), "byoc_gateway_limits_store_replicas") == 3 for s in servers),
        what="three replicas counted",
    )
    yield servers
    for server in servers:
        server.stop()


@functools.cache
def client(server: Server, key: str) -> openai.OpenAI:
    """One client per replica and key (making one takes tens of milliseconds)."""
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=KEYS[key][0] if key in KEYS else key, max_retries=0, timeout=30
    )


def ask(server: Server, key: str, user: str | None = None) -> int:
    """One request; the HTTP status the client saw."""
    try:
        extra = {"user": user} if user else {}
        client(server, key).completions.create(model=MODEL, prompt="One", max_tokens=5, **extra)  # type: ignore[call-overload]
    except openai.APIStatusError as error:
        return error.status_code
    except openai.APIConnectionError:
        return 0  # the gateway went away mid-request
    return 200


def spread(servers: list[Server], key: str, count: int, threads: int = 6) -> tuple[list[int], float]:
    """`count` requests round-robin over the replicas, `threads` at a time: their statuses, and the seconds taken."""
    targets = list(itertools.islice(itertools.cycle(servers), count))
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(lambda s: ask(s, key), targets))
    return statuses, time.monotonic() - started


def test_requests_per_minute_hold_across_three_replicas(gateways: list[Server]) -> None:
    statuses, seconds = spread(gateways, "rpm60", 90)
    assert set(statuses) <= {200, 429}
    allowed = 60 + seconds * 60 / 60  # the burst, plus what refilled while the requests ran
    assert abs(statuses.count(200) - allowed) <= 0.05 * allowed + 1, (statuses.count(200), seconds)
    # whichever replica: the next one is refused with OpenAI's shape and a Retry-After
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateways[1], "rpm60").completions.create(model=MODEL, prompt="One", max_tokens=5)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_tokens_per_minute_hold_across_three_replicas(gateways: list[Server]) -> None:
    statuses, seconds = spread(gateways, "tpm", 160, threads=3)
    assert set(statuses) <= {200, 429}
    used = statuses.count(200) * TOKENS
    allowed = 1600 + seconds * 1600 / 60
    assert abs(used - allowed) <= 0.05 * allowed, (used, allowed)
    reasons = sum(metric(s.metrics(), "byoc_gateway_rate_limited_total", reason="key_tpm") or 0 for s in gateways)
    assert reasons == statuses.count(429)


def test_concurrency_holds_across_three_replicas(gateways: list[Server]) -> None:
    with ThreadPoolExecutor(3) as pool:
        holders = [pool.submit(ask, server, "conc3", "hold:4") for server in gateways]  # one slot on each replica
        time.sleep(1.0)
        assert [ask(server, "conc3") for server in gateways] == [429, 429, 429]
        time.sleep(2.0)  # past the 2 s lease: the gateways renew the slots of requests still running
        assert [ask(server, "conc3") for server in gateways] == [429, 429, 429]
        assert [h.result() for h in holders] == [200, 200, 200]
    assert [ask(server, "conc3") for server in gateways] == [200, 200, 200]  # the slots came back


def test_budget_holds_across_three_replicas_and_says_when_it_resets(gateways: list[Server]) -> None:
    statuses, _ = spread(gateways, "budget", 60, threads=1)
    assert statuses.count(200) == 50  # 50 answers' tokens, exactly: a budget does not refill
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateways[2], "budget").completions.create(model=MODEL, prompt="One", max_tokens=5)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "insufficient_quota" and body["type"] == "insufficient_quota"
    reset = caught.value.response.headers["x-budget-reset"]
    assert reset.endswith("T00:00:00Z") and reset in body["message"]
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    assert reset.startswith(tomorrow)
    assert 0 < int(caught.value.response.headers["retry-after"]) <= 86400
    assert ask(gateways[0], "rpm60") in (200, 429)  # another key is not affected by this one's budget


def test_concurrent_requests_cannot_spend_a_budget_many_times_over(gateways: list[Server]) -> None:
    """30 requests at once over three replicas against a budget of ten answers: each holds its prompt and max_tokens
    while it runs, so ten are admitted (charged only their prompt estimates at admission, fifteen were, and with
    longer answers the budget ended many times over spent)."""

    def held(server: Server) -> int:
        try:
            client(server, "burst").completions.create(model=MODEL, prompt=ELEVEN_TOKENS, max_tokens=5, user="hold:2")
        except openai.APIStatusError as error:
            return error.status_code
        return 200

    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(held, itertools.islice(itertools.cycle(gateways), 30)))
    assert set(statuses) <= {200, 429}
    assert 10 <= statuses.count(200) <= 11, statuses.count(200)  # at most the last one admitted past it
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateways[0], "burst").completions.create(model=MODEL, prompt="One", max_tokens=5)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "insufficient_quota"


def test_a_killed_gateways_slots_come_back_after_the_lease(
    gateways: list[Server], store: RedisServer, standin: StandInEngine, keys_file: Path, tmp_path: Path
) -> None:
    doomed = _gateway(tmp_path, standin, store, keys_file)
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(ask, doomed, "killed", "hold:6")
        # probing before the holder is in would take the key's one slot from it
        wait_for(lambda: metric(doomed.metrics(), "byoc_gateway_in_flight_requests") == 1, what="the holder admitted")
        assert ask(gateways[0], "killed") == 429  # its slot is taken, seen from another replica
        doomed.kill()  # -9: no chance to give its slot back
        killed_at = time.monotonic()
        wait_for(lambda: ask(gateways[1], "killed") == 200, timeout=LEASE + 5, what="the slot back after the lease")
        freed = time.monotonic() - killed_at
        print(f"a killed gateway's slot came back {freed:.2f} s after the kill (lease {LEASE} s)")
        assert freed <= LEASE + 2
        assert holder.result(timeout=10) == 0  # its client saw the connection drop


def test_without_a_store_tpm_and_budget_hold_in_one_gateway(
    standin: StandInEngine, keys_file: Path, tmp_path: Path
) -> None:
    alone = start_gateway(tmp_path, [standin.url], keys=keys_file)
    try:
        statuses = [ask(alone, "budget") for _ in range(52)]
        assert statuses.count(200) == 50 and statuses[-1] == 429
        with pytest.raises(openai.RateLimitError) as caught:
            client(alone, "budget").completions.create(model=MODEL, prompt="One", max_tokens=5)
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "insufficient_quota"
        started = time.monotonic()
        statuses = [ask(alone, "tpm") for _ in range(130)]
        allowed = 1600 + (time.monotonic() - started) * 1600 / 60  # a minute's tokens, + what refilled meanwhile
        assert abs(statuses.count(200) * TOKENS - allowed) <= 0.05 * allowed
        assert "byoc_gateway_limits_store_up" not in alone.metrics()
    finally:
        alone.stop()


def test_byoc_keys_create_and_revoke_reach_every_replica_within_seconds(
    gateways: list[Server], store: RedisServer
) -> None:
    created = byoc("keys", "create", "tenant-a", "--store", store.url, "--rpm", "100", "-o", "json")
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    key = issued["key"]
    assert issued["name"] == "tenant-a" and issued["rpm"] == 100 and len(issued["sha256"]) == 64
    assert key not in created.stderr
    started = time.monotonic()
    for server in gateways:
        wait_for(lambda s=server: ask(s, key) == 200, timeout=5, what="the new key on every replica")
    picked_up = time.monotonic() - started
    print(f"a created key served by all 3 replicas {picked_up:.2f} s after `byoc keys create` returned")
    assert picked_up < 3.0

    listed = json.loads(byoc("keys", "list", "--store", store.url, "-o", "json").stdout)
    names = {row["name"]: row for row in listed}
    assert names["tenant-a"]["source"] == "store" and names["tenant-a"]["rpm"] == 100
    assert names["rpm60"]["source"] == "file"  # the gateways announced their keys file's names

    revoked = byoc("keys", "revoke", "tenant-a", "--store", store.url)
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    for server in gateways:
        wait_for(lambda s=server: ask(s, key) == 401, timeout=5, what="the revoked key refused on every replica")
    refused = time.monotonic() - started
    print(f"a revoked key refused by all 3 replicas {refused:.2f} s after `byoc keys revoke` returned")
    assert refused < 3.0

    # a key of the keys file is revoked the same way, and rotate gives a stored key a new secret
    assert byoc("keys", "revoke", "share", "--store", store.url).returncode == 0
    wait_for(lambda: all(ask(s, "share") == 401 for s in gateways), timeout=5, what="the file key revoked")
    first = byoc("keys", "create", "tenant-b", "--store", store.url).stdout.strip()
    rotated = byoc("keys", "rotate", "tenant-b", "--store", store.url).stdout.strip()
    assert first != rotated and rotated.startswith("sk-byoc-")
    wait_for(lambda: all(ask(s, rotated) == 200 and ask(s, first) == 401 for s in gateways), timeout=5, what="rotated")
    # the keys never reached a log
    for server in gateways:
        text = server.log.read_text()
        assert key not in text and first not in text and rotated not in text


def test_a_store_that_loses_its_data_gets_the_keys_back_revocations_included(
    gateways: list[Server], store: RedisServer
) -> None:
    """The store restarted empty (an ElastiCache failover without a replica, a snapshot restore): a revoked key must
    not come back to life and a key `byoc keys` made must not vanish; the replicas write back what they held."""
    kept = byoc("keys", "create", "tenant-kept", "--store", store.url).stdout.strip()
    gone = byoc("keys", "create", "tenant-gone", "--store", store.url).stdout.strip()
    assert byoc("keys", "revoke", "tenant-gone", "--store", store.url).returncode == 0
    wait_for(lambda: all(ask(s, kept) == 200 and ask(s, gone) == 401 for s in gateways), timeout=5, what="keys")

    store.kill()
    store.start()  # empty: nothing saved
    # whichever replica beats first writes them back; the others then read them as a newer version
    wait_for(
        lambda: (
            sum(metric(s.metrics(), "byoc_gateway_keys_restored_total") or 0 for s in gateways) >= 1
            and all(metric(s.metrics(), "byoc_gateway_limits_store_up") == 1 for s in gateways)
        ),
        timeout=15,
        what="the keys written back",
    )
    wait_for(lambda: all(ask(s, kept) == 200 and ask(s, gone) == 401 for s in gateways), timeout=10, what="same keys")
    listed = {row["name"]: row for row in json.loads(byoc("keys", "list", "--store", store.url, "-o", "json").stdout)}
    assert "tenant-kept" in listed
    assert any("the store lost data" in s.log.read_text() for s in gateways)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["create", "bad name!"], "NAME"),
        (["create", "ok-name", "--rpm", "-1"], "--rpm"),
        (["create", "ok-name", "--tpm", "1000000000000000"], "--tpm"),
        (["create", "ok-name", "--budget-tokens", "5", "--budget-period", "week"], "--budget-period"),
        (["revoke", "nobody-by-that-name"], "NAME"),
        (["rotate", "nobody-by-that-name"], "NAME"),
    ],
)
def test_byoc_keys_refuses_bad_input_with_exit_2(store: RedisServer, args: list[str], field: str) -> None:
    result = byoc("keys", *args, "--store", store.url)
    assert result.returncode == 2, result.stderr
    assert f"error: {field}" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_store_that_does_not_answer_is_exit_2_naming_the_flag(tmp_path: Path, standin: StandInEngine) -> None:
    nobody = f"redis://127.0.0.1:{free_port()}"
    result = byoc("keys", "list", "--store", nobody)
    assert result.returncode == 2 and "error: --store" in result.stderr
    result = byoc("keys", "list", "--store", "http://127.0.0.1:6379")
    assert result.returncode == 2 and "error: --store" in result.stderr
    result = byoc("keys", "list", "--store", "redis://:secret@127.0.0.1:6379")
    assert result.returncode == 2 and "secret" not in result.stderr and "--store-password-file" in result.stderr
    port = free_port()
    gateway = byoc(
        "serve",
        "gateway",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        standin.url,
        "--insecure-no-auth",
        "--store",
        nobody,
    )
    assert gateway.returncode == 2 and "error: --store" in gateway.stderr and "Traceback" not in gateway.stderr
    gateway = byoc(
        "serve",
        "gateway",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        standin.url,
        "--insecure-no-auth",
        "--store",
        nobody,
        "--store-password-file",
        str(tmp_path / "missing"),
    )
    assert gateway.returncode == 2 and "error: --store-password-file" in gateway.stderr


def test_with_the_store_down_no_request_fails_and_each_replica_enforces_its_share(
    gateways: list[Server], store: RedisServer
) -> None:
    """Last in the module: it kills the store."""
    earlier = [server.log.read_text().count("unreachable") for server in gateways]  # an earlier test's outage
    store.kill()
    assert ask(gateways[0], "sk-nobody-0000000000000000") == 401  # still checked, never a 500
    results = [ask(gateways[0], "conc3") for _ in range(5)]
    assert results == [200] * 5  # no limit but concurrency (a share of 1 each): served
    rpm_results = [ask(gateways[1], "rpm60") for _ in range(40)]
    assert set(rpm_results) <= {200, 429}
    assert 20 <= rpm_results.count(200) <= 22, rpm_results.count(200)  # 60 / 3 replicas, + refill
    for server in gateways:
        wait_for(lambda s=server: metric(s.metrics(), "byoc_gateway_limits_store_up") == 0, what="store_up 0")
    assert (metric(gateways[1].metrics(), "byoc_gateway_limits_store_fallbacks_total") or 0) >= 40
    for server, before in zip(gateways, earlier, strict=True):
        assert server.log.read_text().count("unreachable") == before + 1  # logged once
    store.start()
    for server in gateways:
        wait_for(lambda s=server: metric(s.metrics(), "byoc_gateway_limits_store_up") == 1, what="store_up back to 1")
        wait_for(lambda s=server: "reachable: limits hold" in s.log.read_text().split("unreachable")[-1], what="log")
    assert ask(gateways[2], "conc3") == 200
    assert http("GET", gateways[0].url + "/ready").status == 200


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"tpm": -5}, "tpm must be a whole number from 0"),
        ({"tpm": 10**12}, "tpm must be a whole number from 0 to 100,000,000,000"),
        ({"rpm": 10**9}, "rpm must be a whole number from 0 to 100,000,000"),
        ({"budget": {"tokens": 100, "period": "week"}}, "budget.period 'week' is not a period"),
        ({"budget": {"tokens": 0, "period": "day"}}, "budget.tokens must be a whole number from 1"),
        ({"budget": 5000}, "budget must be {tokens: N, period: day|month}"),
    ],
)
def test_the_keys_file_refuses_bad_limits_naming_the_entry(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    from byoc.errors import ByocError
    from runtime.serve.keys import load_keys

    path = tmp_path / "keys.yaml"
    path.write_text(json.dumps([{"name": "ci", "sha256": "a" * 64, **entry}]))
    with pytest.raises(ByocError) as caught:
        load_keys(path)
    assert caught.value.field == "--api-keys" and "key 1" in str(caught.value) and message in str(caught.value)


def test_the_keys_file_takes_tpm_and_budgets(tmp_path: Path) -> None:
    from runtime.serve.keys import Budget, load_keys

    path = tmp_path / "keys.yaml"
    path.write_text(
        "- {name: ci, sha256: " + "b" * 64 + ", rpm: 60, tpm: 1000, budget: {tokens: 500, period: month}}\n"
    )
    (key,) = load_keys(path)
    assert (key.rpm, key.tpm, key.budget) == (60, 1000, Budget(500, "month"))
    hashed = subprocess.run(
        [sys.executable, "-m", "byoc", "serve", "hash-key", "--name", "ci", "--rpm", "60", "--tpm", "1000"],
        input="sk-hash-me-0123456789abcdef\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert hashed.returncode == 0 and "rpm: 60" in hashed.stdout and "tpm: 1000" in hashed.stdout
    assert "sk-hash-me" not in hashed.stdout
