"""KV-cache-aware routing through the real gateway to two CPU engines: a prefix goes where it is cached, a hot
prefix spreads under the load bound, and a replica killed mid-run is routed around and forgotten."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import ROOT
from tests.runtime.conftest import MODEL, Server, http, metric, start_engine, start_gateway, wait_for
from tests.tiny_model import CORPUS

TENANTS = {name: " ".join(CORPUS[i : i + 14]) + f" You answer for {name}." for i, name in enumerate(["acme", "bolt"])}


@pytest.fixture(scope="module")
def replicas(tiny_models: dict[str, Path], runtime_dir: Path) -> Iterator[list[Server]]:
    servers = [start_engine(tiny_models, runtime_dir, wait=False) for _ in range(2)]
    for server in servers:
        server.wait()
    yield servers
    for server in servers:
        server.stop()


def served(engine: Server) -> float:
    """Requests an engine has answered (trtllm_request_success_total, all finish reasons)."""
    text = http("GET", engine.url + "/prometheus/metrics").body.decode()
    return sum(
        metric(text, "trtllm_request_success_total", finished_reason=reason) or 0.0 for reason in ("length", "stop")
    )


def reused(engine: Server) -> float:
    text = http("GET", engine.url + "/prometheus/metrics").body.decode()
    return metric(text, "trtllm_kv_cache_reused_blocks_total") or 0.0


def ask(gateway: Server, tenant: str, question: str, tokens: int = 2) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": TENANTS[tenant]}, {"role": "user", "content": question}],
        max_tokens=tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return answer.choices[0].message.content or ""


def gateway_for(
    mode: str, replicas: list[Server], tiny_models: dict[str, Path], runtime_dir: Path, *more: str
) -> Server:
    extra = ["--routing", mode, "--health-interval", "0.3", *more]
    if mode == "precise":
        extra += ["--routing-tokenizer", str(tiny_models["base"])]
    return start_gateway(runtime_dir, [r.url for r in replicas], *extra)


@pytest.mark.parametrize("mode", ["precise", "approximate"])
def test_a_prefix_goes_to_the_replica_that_holds_it(
    mode: str, replicas: list[Server], tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    gateway = gateway_for(mode, replicas, tiny_models, runtime_dir)
    try:
        before = [served(r) for r in replicas]
        reused_before = [reused(r) for r in replicas]
        ask(gateway, "acme", "Hello?")
        first = [served(r) - b for r, b in zip(replicas, before, strict=True)]
        holder = first.index(1)
        for question in ("What is the weather?", "Tell me one two three.", "Who are you?", "And now?"):
            ask(gateway, "acme", question)
        after = [served(r) - b for r, b in zip(replicas, before, strict=True)]
        assert after[holder] == 5 and after[1 - holder] == 0  # every later request found its prefix there
        assert reused(replicas[holder]) - reused_before[holder] >= 4 * 5  # and reused its system prompt's blocks
        assert reused(replicas[1 - holder]) == reused_before[1 - holder]
        # another tenant's prompt is held nowhere: the least busy replica takes it (here: a tie, round-robin)
        ask(gateway, "bolt", "Hello?")
    finally:
        gateway.stop()


def test_a_hot_prefix_spreads_under_the_load_bound(
    replicas: list[Server], tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    gateway = gateway_for("precise", replicas, tiny_models, runtime_dir)
    try:
        ask(gateway, "acme", "Warm up.")
        before = [served(r) for r in replicas]
        failures: list[BaseException] = []

        def one() -> None:
            try:
                ask(gateway, "acme", "Count slowly.", tokens=120)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not failures
        spread = [served(r) - b for r, b in zip(replicas, before, strict=True)]
        assert sum(spread) == 6
        # bound = ceil(1.25 x (outstanding + 1) / 2): the replica holding the prefix takes 3 or 4 of 6, never all
        assert min(spread) >= 2, spread
    finally:
        gateway.stop()


def test_a_replica_killed_mid_run_is_routed_around_and_forgotten(
    tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    engines = [start_engine(tiny_models, runtime_dir, wait=False) for _ in range(2)]
    for engine in engines:
        engine.wait()
    gateway = gateway_for("precise", engines, tiny_models, runtime_dir)
    try:
        before = [served(e) for e in engines]
        ask(gateway, "acme", "Hello?")
        holder = [served(e) - b for e, b in zip(engines, before, strict=True)].index(1)
        survivor = engines[1 - holder]
        answers: list[str] = []
        failures: list[BaseException] = []

        def run() -> None:
            for i in range(12):
                try:
                    answers.append(ask(gateway, "acme", f"Question {i}?", tokens=30))
                except BaseException as exc:
                    failures.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        wait_for(lambda: len(answers) >= 3, timeout=120, what="three answers")
        engines[holder].kill()  # the replica holding the tenant's prefix dies in the middle of the run
        worker.join(timeout=300)
        assert not failures and len(answers) == 12  # every request was answered (retried once on the survivor)
        assert served(survivor) > before[1 - holder]
        ready = http("GET", gateway.url + "/ready").json()
        assert ready["upstreams_ready"] == 1
        assert ask(gateway, "acme", "Still there?")  # the survivor now holds the prefix and serves it
    finally:
        gateway.stop()
        for engine in engines:
            engine.stop()


@pytest.mark.parametrize("mode", ["precise", "approximate"])
def test_sequential_requests_stay_on_the_idle_replica_that_holds_their_prefix(
    mode: str, replicas: list[Server], tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    """One tenant alone, one request at a time: nothing is ever in progress, so its replica's past load (the decayed
    recent-load bound, which fires after about six requests on two replicas) must not move it to an empty cache."""
    gateway = gateway_for(mode, replicas, tiny_models, runtime_dir)
    try:
        before = [served(r) for r in replicas]
        missed_before = [missed(r) for r in replicas]
        for i in range(12):
            ask(gateway, "acme", f"Question number {i}?")
        spread = [served(r) - b for r, b in zip(replicas, before, strict=True)]
        assert sorted(spread) == [0, 12], spread
        # the replica that never took the tenant missed nothing: no prefix went to an empty cache
        other = spread.index(0)
        assert missed(replicas[other]) == missed_before[other]
    finally:
        gateway.stop()


@pytest.mark.parametrize("mode", ["precise", "approximate"])
def test_an_addon_keeps_going_to_the_replica_that_has_its_adapter(
    mode: str, replicas: list[Server], tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    """Short prompts (no full prefix block): the loaded adapter alone keeps 12 sequential requests on one replica."""
    gateway = gateway_for(mode, replicas, tiny_models, runtime_dir)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        before = [served(r) for r in replicas]
        for i in range(12):
            client.chat.completions.create(
                model="sql", messages=[{"role": "user", "content": f"Query {i}?"}], max_tokens=2, temperature=0
            )
        spread = sorted(served(r) - b for r, b in zip(replicas, before, strict=True))
        assert spread == [0, 12]  # never loaded on the other replica in turn
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--routing", "precise"], "--routing-tokenizer"),
        (["--routing", "nearest"], "--routing"),
        (["--routing", "approximate", "--routing-load-factor", "0.5"], "--routing-load-factor"),
    ],
)
def test_routing_settings_are_checked_before_start(flags: list[str], named: str) -> None:

    command = [
        sys.executable,
        "-m",
        "byoc",
        "serve",
        "gateway",
        "--upstream",
        "http://127.0.0.1:9",
        "--insecure-no-auth",
    ]
    done = subprocess.run([*command, *flags], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 2
    assert named in done.stderr and "Traceback" not in done.stderr


def missed(engine: Server) -> float:
    text = http("GET", engine.url + "/prometheus/metrics").body.decode()
    return metric(text, "trtllm_kv_cache_missed_blocks_total") or 0.0


def ready_upstreams(gateway: Server) -> int:
    return int(http("GET", gateway.url + "/ready").json()["upstreams_ready"])


def test_a_replica_restarted_in_place_loses_its_cache_credit(tiny_models: dict[str, Path], runtime_dir: Path) -> None:
    """approximate mode: an engine that restarts at the same address has an empty cache; the gateway must stop
    sending it the prefixes it held before (they go to the replica that still holds them, and hit there)."""
    engines = [start_engine(tiny_models, runtime_dir, wait=False) for _ in range(2)]
    gateway: Server | None = None
    try:
        for engine in engines:
            engine.wait()
        gateway = gateway_for("approximate", engines, tiny_models, runtime_dir)
        ask(gateway, "acme", "Warm up.")
        before = [served(e) for e in engines]
        failures: list[BaseException] = []

        def one() -> None:
            try:
                ask(gateway, "acme", "Count slowly.", tokens=200)
            except BaseException as exc:
                failures.append(exc)

        # three at once: the load bound sends the third to the other replica, so both hold acme's prefix
        threads = [threading.Thread(target=one) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not failures
        spread = [served(e) - b for e, b in zip(engines, before, strict=True)]
        assert min(spread) >= 1, f"the load bound did not spread the prefix: {spread}"
        # restart the replica that took fewer: by old credit it would be the cheaper one (fewer recent requests)
        restarted = spread.index(min(spread))
        survivor = engines[1 - restarted]
        engines[restarted].stop()
        wait_for(lambda: ready_upstreams(gateway) == 1, timeout=30, what="the gateway to see the replica go")
        engines[restarted] = start_engine(tiny_models, runtime_dir, port=engines[restarted].port)
        wait_for(lambda: ready_upstreams(gateway) == 2, timeout=30, what="the gateway to see the replica back")
        reused_before, served_before = reused(survivor), served(survivor)
        for question in ("What now?", "And then?"):
            ask(gateway, "acme", question)
        # the restarted engine (counters from zero) took none of them and missed nothing; the survivor reused acme's
        # prefix for both
        assert served(engines[restarted]) == 0
        assert missed(engines[restarted]) == 0
        assert served(survivor) - served_before == 2
        assert reused(survivor) - reused_before >= 2 * 4
    finally:
        if gateway is not None:
            gateway.stop()
        for engine in engines:
            engine.stop()


def tenant_prompt(name: str, i: int) -> str:
    # the tenant's name first: no two tenants share a leading block
    return f"You answer for {name}, and only for {name}. " + " ".join(CORPUS[i * 9 : i * 9 + 14])


def prefix_hit_rate(gateways: list[Server], replicas: list[Server], tenants: list[str], rounds: int) -> float:
    """Each tenant asked `rounds` times, requests alternated across the gateways as a Service spreads clients; the
    engines' reused / (reused + missed) prompt blocks over the run."""
    before = [(reused(r), missed(r)) for r in replicas]
    for round_ in range(rounds):
        for i, name in enumerate(tenants):
            # each tenant's successive requests reach different gateways
            gateway = gateways[(round_ + i) % len(gateways)]
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            client.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "system", "content": tenant_prompt(name, i)},
                    {"role": "user", "content": f"Question {round_}?"},
                ],
                max_tokens=2,
                temperature=0,
            )
    hits = sum(reused(r) - b[0] for r, b in zip(replicas, before, strict=True))
    misses = sum(missed(r) - b[1] for r, b in zip(replicas, before, strict=True))
    return hits / (hits + misses)


@pytest.mark.parametrize("mode", ["approximate", "precise"])
def test_two_gateway_replicas_keep_the_prefix_hit_rate_of_one(
    mode: str, replicas: list[Server], tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    """Two gateways, each with its own routing state, taking alternate requests: a tenant's prefix still reaches the
    replica that holds it (rendezvous home), so the hit rate stays within 0.9x of one gateway's.

    A load factor of 4 keeps the load bounds out of this small run (18 requests, one at a time): with six tenants on
    two replicas, the recent-load bound may move a tenant in one run and not the other, which is balancing, not the
    agreement between gateways tested here."""
    factor = ("--routing-load-factor", "4")
    one = [gateway_for(mode, replicas, tiny_models, runtime_dir, *factor)]
    try:
        single = prefix_hit_rate(one, replicas, [f"{mode}-solo-{i}" for i in range(6)], rounds=3)
    finally:
        one[0].stop()
    two: list[Server] = []
    try:
        for _ in range(2):  # one by one: a gateway that fails to start leaves none running
            two.append(gateway_for(mode, replicas, tiny_models, runtime_dir, *factor))
        pair = prefix_hit_rate(two, replicas, [f"{mode}-pair-{i}" for i in range(6)], rounds=3)
    finally:
        for gateway in two:
            gateway.stop()
    assert single > 0.5  # each tenant misses once, on its first request, then hits
    assert pair >= 0.9 * single, (single, pair)
