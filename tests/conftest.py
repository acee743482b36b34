from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from byoc.errors import ByocError
from byoc.resolve import Deployment, resolve
from byoc.spec import build_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def spec_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "test",
        "cloud": "aws",
        "region": "EUROPE",
        "model": "llama-3.1-8b-instruct",
        "shape": "h100x1-fp8",
    }
    data.update(overrides)
    return data


def deploy(**overrides: Any) -> Deployment:
    return resolve(build_spec(spec_data(**overrides)))


def refused(**overrides: Any) -> ByocError:
    with pytest.raises(ByocError) as caught:
        deploy(**overrides)
    return caught.value
