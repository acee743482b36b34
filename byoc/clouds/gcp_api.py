"""Plain REST to the Google Cloud APIs byoc's preflight and sweep read: google-auth's credentials and its
AuthorizedSession (requests), no per-service client library.

Credentials: GOOGLE_OAUTH_ACCESS_TOKEN (an access token, as the Pulumi/Terraform Google provider also reads it)
when set, else Application Default Credentials (`gcloud auth application-default login`, a service-account key in
GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata server). The project: GOOGLE_CLOUD_PROJECT (or
GOOGLE_PROJECT / CLOUDSDK_CORE_PROJECT), else the one ADC names, as the GCP stack's provider finds it.

Endpoints: `https://<service>.googleapis.com` unless BYOC_GCP_<SERVICE>_ENDPOINT (COMPUTE, CONTAINER, STORAGE, IAM,
CLOUDKMS, LOGGING) or BYOC_GCP_ENDPOINT (all of them) names another base URL: the tests point them at a local
server replaying recorded API responses (as AWS_ENDPOINT_URL points boto3 at moto).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# service -> the path its REST API's version lives under
API_ROOTS = {
    "compute": "/compute/v1",
    "container": "/v1",
    "storage": "/storage/v1",
    "iam": "/v1",
    "cloudkms": "/v1",
    "logging": "/v2",
}
PROJECT_VARIABLES = ("GOOGLE_CLOUD_PROJECT", "GOOGLE_PROJECT", "CLOUDSDK_CORE_PROJECT")


class GcpUnavailable(Exception):
    """No credentials, no project, or the SDK (google-auth, requests) is not installed."""

    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


@dataclass
class ApiError(Exception):
    """A non-2xx answer (or a connection failure: status 0), with Google's error status, reason and message."""

    status: int
    code: str
    message: str
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}" if self.status else f"{self.code}: {self.message}"

    @property
    def service_disabled(self) -> bool:
        return "SERVICE_DISABLED" in self.reasons or "accessNotConfigured" in self.reasons


def endpoint(service: str) -> str:
    base = os.environ.get(f"BYOC_GCP_{service.upper()}_ENDPOINT") or os.environ.get("BYOC_GCP_ENDPOINT")
    return (base or f"https://{service}.googleapis.com").rstrip("/") + API_ROOTS[service]


def _error(status: int, body: Any, text: str) -> ApiError:
    """Google's error envelope ("Uniform error format", cloud.google.com/apis/design/errors):
    {"error": {"code", "message", "status", "errors": [{"reason"}], "details": [{"@type", "reason"}]}}."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ApiError(status, f"HTTP {status}", text.strip()[:200] if "<" not in text else "")
    reasons = [str(e.get("reason")) for e in error.get("errors", []) if isinstance(e, dict) and e.get("reason")]
    reasons += [str(d.get("reason")) for d in error.get("details", []) if isinstance(d, dict) and d.get("reason")]
    # Compute's errors carry a reason (forbidden, notFound, ...) and no status; the newer APIs a status
    code = str(error.get("status") or (reasons[0] if reasons else status))
    return ApiError(status, code, str(error.get("message", ""))[:300], reasons)


class GcpSession:
    """Authorized requests to the Google APIs of one project."""

    def __init__(self, timeout_s: float = 20.0) -> None:
        try:
            import google.auth
            import google.auth.exceptions
            from google.auth.transport.requests import AuthorizedSession
            from google.oauth2.credentials import Credentials
        except ImportError as exc:
            raise GcpUnavailable(
                f"the Google auth library is not installed ({exc.name})",
                "pip install 'byoc-inference[gcp]' (google-auth and requests come with it)",
            ) from exc
        project = next((os.environ[v] for v in PROJECT_VARIABLES if os.environ.get(v)), None)
        token = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")
        credentials: Any
        if token:
            credentials, self.source = Credentials(token), "GOOGLE_OAUTH_ACCESS_TOKEN"  # type: ignore[no-untyped-call]
        else:
            try:
                credentials, found = google.auth.default(scopes=[CLOUD_PLATFORM])
            except google.auth.exceptions.DefaultCredentialsError as exc:
                raise GcpUnavailable(
                    "no Google Cloud credentials found (Application Default Credentials)",
                    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS (in CI: "
                    "workload identity federation)",
                ) from exc
            project = project or found
            self.source = "Application Default Credentials"
        if not project:
            raise GcpUnavailable(
                "credentials found, but no Google Cloud project",
                "set GOOGLE_CLOUD_PROJECT (the project byoc deploys into)",
            )
        self.project: str = project
        self.account = str(getattr(credentials, "service_account_email", "") or "")
        self.timeout_s = timeout_s
        self.http = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]

    def call(self, method: str, service: str, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; path is below the API's version root (e.g. /projects/p/regions/r for compute).

        Raises:
            ApiError: on a non-2xx answer, or status 0 when the endpoint cannot be reached.
        """
        import google.auth.exceptions
        import requests

        url = endpoint(service) + path
        try:
            answer = self.http.request(method, url, params=params, timeout=self.timeout_s)  # type: ignore[no-untyped-call]
        except (requests.RequestException, google.auth.exceptions.GoogleAuthError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc)[:300]) from exc
        text = answer.text
        try:
            body = answer.json() if text else {}
        except ValueError:
            body = None
        if answer.status_code >= 300:
            raise _error(answer.status_code, body, text)
        return body if isinstance(body, dict) else {}

    def pages(self, service: str, path: str, key: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every item of a paged list (`nextPageToken` -> `pageToken`). For Compute's aggregated lists, `key`
        is looked up inside each scope of `items` ({"zones/x": {key: [...]}})."""
        found: list[dict[str, Any]] = []
        query = dict(params or {})
        while True:
            page = self.call("GET", service, path, query)
            items = page.get("items", page.get(key, []))
            if isinstance(items, dict):  # aggregated: {"zones/europe-west4-a": {"instances": [...]}, ...}
                for scope, inner in items.items():
                    for item in inner.get(key, []):
                        found.append({"_scope": scope, **item})
            else:
                found += items
            token = page.get("nextPageToken")
            if not token:
                return found
            query["pageToken"] = token

    def wait(
        self,
        operation: dict[str, Any],
        service: str,
        wait_s: float,
        sleep_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Wait for a long-running operation (Compute's selfLink, GKE's operations/<name>) to be DONE.

        Raises:
            ApiError: the operation's error, or a timeout (status 0).
        """
        deadline = time.monotonic() + wait_s
        while str(operation.get("status", "DONE")) != "DONE":
            if time.monotonic() > deadline:
                raise ApiError(0, "Timeout", f"operation {operation.get('name')} not done after {wait_s:.0f}s")
            sleep(sleep_s)
            operation = self.call("GET", service, _operation_path(operation, service))
        error = operation.get("error")
        if error:
            errors = error.get("errors", []) if isinstance(error, dict) else []
            message = "; ".join(str(e.get("message", e)) for e in errors) or str(error)
            raise ApiError(0, "OperationFailed", message[:300])


def _operation_path(operation: dict[str, Any], service: str) -> str:
    link = str(operation.get("selfLink", ""))
    root = API_ROOTS[service]
    if root in link:
        return link.split(root, 1)[1]
    return "/" + str(operation.get("name", "")).lstrip("/")
