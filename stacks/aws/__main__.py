"""`pulumi preview -C stacks/aws` / `pulumi up -C stacks/aws`: the program byoc runs, for users with the Pulumi CLI.

pulumi config set byoc:spec ../../examples/byoc.yaml   # per stack (Pulumi.<stack>.yaml)

A multi-region deployment (docs/multi-region.md) has a stack per region, <name>-<region code>, and the global layer,
<name>-global: create each with that name, the other regions first, then the primary, then the global layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pulumi

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from byoc.pulumi_sdks import STACK_OUTPUT, require_pinned  # noqa: E402
from byoc.resolve import resolve  # noqa: E402
from byoc.spec import load_spec  # noqa: E402
from stacks.aws.program import program  # noqa: E402
from stacks.multi_region import stack_program  # noqa: E402

spec_path = Path(pulumi.Config("byoc").require("spec"))
if not spec_path.is_absolute():
    spec_path = Path(__file__).parent / spec_path
# the provider versions this program was written for, refused otherwise, and recorded as `byoc up` records them
pulumi.export(STACK_OUTPUT, require_pinned("pulumi-aws", "stacks/aws"))
# a multi-region deployment: the stack's name says which region (or the global layer) it is
deployment = resolve(load_spec(spec_path, {"cloud": "aws"}))
run = stack_program(deployment, pulumi.get_stack(), program, "stacks.aws.global_layer:program")
for name, value in run().items():
    pulumi.export(name, value)
