"""The browser's way in: a small self-contained login page that trades a token for a session cookie.

The frontend cannot add an `Authorization` header to its requests, websocket or images, so it
relies on an HttpOnly, SameSite=Strict cookie holding a signed session, never the token itself.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from comfymesh.gateway.auth import SESSION_COOKIE, Authenticator, AuthError
from comfymesh.gateway.lockout import Lockout

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>comfymesh: log in</title>
<style>body{{font-family:system-ui,sans-serif;background:#202020;color:#ddd;display:grid;place-items:center;
height:100vh;margin:0}}form{{background:#2b2b2b;padding:2rem;border-radius:8px;width:22rem}}
input{{width:100%;box-sizing:border-box;padding:.5rem;margin:.5rem 0 1rem;background:#111;color:#eee;
border:1px solid #555;border-radius:4px}}button{{padding:.5rem 1rem}}.error{{color:#f77}}</style></head>
<body><form method="post" action="/login"><h1>comfymesh</h1>
<label for="token">API token or JWT</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<input type="hidden" name="next" value="{next}"><p class="error">{error}</p>
<button type="submit">Log in</button></form></body></html>"""


def _safe_next(target: str) -> str:
    # only a path on this site: never an open redirect to another origin
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _page(target: str, error: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(next=html.escape(_safe_next(target)), error=html.escape(error)),
                        status_code=status, headers={"Cache-Control": "no-store"})


def _authenticator(request: Request) -> Authenticator:
    return request.app.state.authenticator  # type: ignore[no-any-return]


def _lockout(request: Request) -> Lockout:
    return request.app.state.lockout  # type: ignore[no-any-return]


@router.get("/login")
async def login_page(request: Request, next: str = "/") -> Response:
    if not _authenticator(request).enabled:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _page(next)


@router.post("/login")
async def log_in(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
    authenticator = _authenticator(request)
    lockout, address = _lockout(request), request.client.host if request.client else ""
    if wait := lockout.wait_s(address):
        page = _page(next, f"Too many wrong tokens from this address: try again in {wait} s.", status=429)
        page.headers["Retry-After"] = str(wait)
        return page
    try:
        principal = authenticator.verify(token.strip())
    except AuthError as exc:
        lockout.failed(address)
        return _page(next, f"Not accepted: {exc}.", status=401)
    lockout.succeeded(address)
    value, max_age = authenticator.issue_session(principal)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.get("/logout")
async def log_out(request: Request) -> Response:
    if (cookie := request.cookies.get(SESSION_COOKIE)) is not None:
        # the cookie may have been copied: deleting it in this browser is not enough (a small file write,
        # done on the loop so that logouts never race on the file)
        _authenticator(request).end_session(cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
