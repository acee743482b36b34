"""Run a cloud's Pulumi program for real through Pulumi's Automation API (needs the `pulumi` CLI and a backend:
`pulumi login`, or PULUMI_BACKEND_URL). It is the same program function `byoc plan` records offline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from byoc.engines import Program
from byoc.errors import ByocFailure
from byoc.resolve import Deployment

Operation = Literal["preview", "up", "destroy"]


def run_live(
    deployment: Deployment, program: Program, operation: Operation, on_output: Callable[[str], None] = print
) -> dict[str, Any]:
    """preview / up / destroy the deployment's stack; returns a summary (changes, or outputs after up)."""
    import pulumi
    from pulumi import automation as auto

    def inline() -> None:
        for name, value in program(deployment).items():
            pulumi.export(name, value)

    try:
        stack = auto.create_or_select_stack(
            stack_name=deployment.name, project_name=f"byoc-{deployment.cloud}", program=inline
        )
    except FileNotFoundError:
        raise ByocFailure(
            operation,
            "the Pulumi CLI is not installed, and `byoc " + operation + "` drives it",
            "install it (pulumi.com/docs/install), or use `byoc plan`, which needs no CLI and no credentials",
        ) from None
    except auto.errors.CommandError as exc:
        raise ByocFailure(operation, f"pulumi could not open the stack: {exc}", "check `pulumi login`") from None
    try:
        if operation == "preview":
            result = stack.preview(on_output=on_output)
            return {"operation": operation, "changes": dict(result.change_summary)}
        if operation == "up":
            outcome = stack.up(on_output=on_output)
            outputs = {k: ("[secret]" if v.secret else v.value) for k, v in outcome.outputs.items()}
            return {"operation": operation, "outputs": outputs}
        stack.destroy(on_output=on_output)
        return {"operation": operation}
    except auto.errors.CommandError as exc:
        raise ByocFailure(operation, f"pulumi {operation} failed: {exc}", "see the output above") from None
