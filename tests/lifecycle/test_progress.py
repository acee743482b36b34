"""The progress views fed with recorded engine events.

data/engine-events-up.jsonl holds an `up` of four resources (the stack, a provider that stays the same, a KMS key,
an EKS cluster that fails) as lines in the shape the Pulumi CLI writes its --event-log (sdk/go/common/apitype
events; written for this test, since no Pulumi CLI runs here); `EngineEvent.from_json` turns each into the object
the Automation API hands to `on_event`, as it does for the real log.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from pulumi.automation import EngineEvent
from rich.console import Console

from byoc.progress import JsonLines, RichProgress

EVENTS = [
    EngineEvent.from_json(json.loads(line))
    for line in (Path(__file__).parent / "data" / "engine-events-up.jsonl").read_text().splitlines()
]


def test_json_lines_stream_one_event_per_line_and_end_with_the_result() -> None:
    stream = io.StringIO()
    view = JsonLines(stream=stream)
    view.step("pulumi up", total=4)
    for event in EVENTS:
        view.engine_event(event)
    view.result({"operation": "up", "state": "FAILED"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0] == {"event": "step", "step": "pulumi up", "total": 4, "elapsed_s": lines[0]["elapsed_s"]}
    assert lines[-1] == {"event": "result", "operation": "up", "state": "FAILED"}
    resources = [e for e in lines if e["event"] == "resource"]
    key_done = next(e for e in resources if e["name"] == "demo-platform" and e["status"] == "done")
    assert (key_done["type"], key_done["op"], key_done["done"], key_done["total"]) == (
        "aws:kms/key:Key",
        "create",
        2,
        4,
    )
    failed = next(e for e in resources if e["status"] == "failed")
    assert failed["type"] == "aws:eks/cluster:Cluster"
    diagnostics = [(e["severity"], e["message"]) for e in lines if e["event"] == "diagnostic"]
    assert diagnostics == [
        ("warning", "kms key deletion window defaults to 30 days"),
        ("error", "creating EKS Cluster (byoc-demo): AccessDeniedException: not authorized"),
    ]  # the ephemeral info line is not streamed
    summary = next(e for e in lines if e["event"] == "summary")
    assert summary["changes"] == {"create": 2, "same": 1} and summary["duration_s"] == 412
    assert all("elapsed_s" in e for e in lines[:-1])


def test_rich_view_shows_step_count_of_total_and_failures() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=160, color_system=None)
    view = RichProgress(console=console)
    view.step("pulumi up", total=4)
    for event in EVENTS[:9]:  # up to the key's outputs: the provider and the key are done
        view.engine_event(event)
    assert view.counter.done and len(view.counter.done) == 2
    for event in EVENTS[9:]:
        view.engine_event(event)
    view.close()
    text = out.getvalue()
    assert "pulumi up" in text
    assert "3/4 resources" in text  # provider, key, stack done; the cluster failed
    assert "warning: kms key deletion window defaults to 30 days" in text
    assert "failed: create aws:eks/cluster:Cluster demo-cluster" in text
    assert "error: creating EKS Cluster (byoc-demo): AccessDeniedException" in text
