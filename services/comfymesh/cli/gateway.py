"""The CLI's side of the gateway: one HTTP client with the server's own address and token, and every refusal
turned into lines a person can act on (never raw JSON)."""

from __future__ import annotations

from typing import Any

import httpx

from comfymesh.config import get_settings

# what to do next, by the problem code /v1 answers with
_BAD_WORKFLOW = ("fix the inputs named above (`comfymesh models list` shows the model files the server has; "
                 "`comfymesh demo` writes tiny ones under the templates' names)")
NEXT_STEP = {
    "prompt_outputs_failed_validation": _BAD_WORKFLOW,
    "prompt_no_outputs": "add an output node (SaveImage, PreviewImage) to the workflow",
    "invalid_prompt": "fix the inputs named above (`comfymesh models list` shows the model files the server has; "
                      "`comfymesh demo` writes tiny ones under the templates' names)",
    "not_found": "`comfymesh jobs` lists the jobs the gateway knows",
    "unauthorized": "set COMFYMESH_API_TOKEN (the gateway's token) or pass --token",
    "forbidden": "this token may not do that; ask for one that may",
    "queue_full": "the queue is full: wait for running jobs, or raise COMFYMESH_MAX_QUEUED on the server",
    "rate_limited": "too many requests: wait a moment and retry",
    "invalid_request": "check the fields named above",
}


class GatewayError(Exception):
    """A refusal or an unreachable gateway, as the lines to print and the exit code to leave with."""

    def __init__(self, lines: list[str], exit_code: int = 1) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.exit_code = exit_code


def default_url() -> str:
    """Where `comfymesh up` serves: the server's own COMFYMESH_HOST/COMFYMESH_PORT (a wildcard bind is reached
    on loopback)."""
    settings = get_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def connect(url: str | None, token: str | None, timeout: float = 30.0) -> httpx.Client:
    """A client for the gateway at `url` (default: the server's settings), with a bearer token when one is set."""
    secret = token if token is not None else get_settings().api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=url or default_url(), timeout=timeout, headers=headers)


def unreachable(http: httpx.Client) -> GatewayError:
    return GatewayError([f"cannot reach comfymesh at {http.base_url}",
                         "start it with `comfymesh up` (or `make run`), or point --url (COMFYMESH_PORT) at it"])


def call(http: httpx.Client, method: str, path: str, **options: Any) -> httpx.Response:
    """Send a request; a connection failure or an error status raises GatewayError with a next step."""
    try:
        response = http.request(method, path, **options)
    except httpx.TransportError as exc:
        if isinstance(exc, httpx.TimeoutException):
            raise GatewayError([f"comfymesh at {http.base_url} did not answer in time ({method} {path})",
                                "it may be busy: retry, or check `comfymesh status`"]) from exc
        raise unreachable(http) from exc
    if response.status_code >= 400:
        raise GatewayError(describe(response))
    return response


def describe(response: httpx.Response) -> list[str]:
    """A refused request as lines: what was refused, why (each node's errors), what to do next."""
    try:
        body: Any = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or _comfy_code(body) or _code_of(response.status_code))
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    detail = str(body.get("detail") or error.get("message") or response.reason_phrase)
    lines = [f"refused ({code}, HTTP {response.status_code}): {detail}".rstrip(": ")]
    for field in body.get("errors") or []:
        where = ".".join(str(part) for part in field.get("loc", []))
        lines.append(f"  {where}: {field.get('msg', '')}")
    for node_id, failure in (body.get("node_errors") or {}).items():
        kind = failure.get("class_type", "")
        for error in failure.get("errors") or []:
            extra = (error.get("extra_info") or {}).get("input_name")
            text, details = str(error.get("message", "")), str(error.get("details") or "")
            if details and details != extra:
                text = f"{text} ({details})"
            lines.append(f"  node {node_id} ({kind}){' ' + extra if extra else ''}: {text}")
    if code in NEXT_STEP:
        lines.append(NEXT_STEP[code])
    return lines


def _comfy_code(body: dict[str, Any]) -> str:
    error = body.get("error")
    return str(error.get("type") or error.get("code") or "") if isinstance(error, dict) else ""


def _code_of(status: int) -> str:
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "rate_limited"}.get(status, f"http_{status}")
