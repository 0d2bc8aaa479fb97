"""The answers of the share listener to one request: short texts for scripts, pages for a browser, no body
for HEAD, each with the headers that keep a link's answers out of caches, referrers and search engines."""

from __future__ import annotations

from .share_page import PAGE_HEADERS, refusal_page

NO_STORE = [("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer"),
            ("X-Content-Type-Options", "nosniff"), ("X-Robots-Tag", "noindex")]

STATUS_LINES = {200: "200 OK", 404: "404 Not Found", 410: "410 Gone", 429: "429 Too Many Requests",
                500: "500 Internal Server Error", 503: "503 Service Unavailable", 303: "303 See Other",
                400: "400 Bad Request", 401: "401 Unauthorized", 409: "409 Conflict"}
BASIC_CHALLENGE = ("WWW-Authenticate", 'Basic realm="share link", charset="UTF-8"')


def _text(start_response, status: int, message: str, extra: list | None = None, *, head: bool = False):
    """A short answer for a person; no body for HEAD (waitress would send one)."""
    body = (message + "\n").encode("utf-8")
    start_response(STATUS_LINES[status], [("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(body))), *NO_STORE, *(extra or [])])
    return [] if head else [body]


class Reply:
    """The answers of one request: short texts for scripts, pages for a browser; no body for HEAD."""

    def __init__(self, start_response, *, head: bool, html: bool):
        self.start_response, self.head, self.html = start_response, head, html

    def text(self, status: int, message: str, extra: list | None = None):
        return _text(self.start_response, status, message, extra, head=self.head)

    def page(self, status: int, body: bytes, extra: list | None = None):
        self.start_response(STATUS_LINES[status], [*PAGE_HEADERS, ("Content-Length", str(len(body))), *NO_STORE,
                                                   *(extra or [])])
        return [] if self.head else [body]

    def refuse(self, status: int, title: str, text: str, hint: str, extra: list | None = None):
        """Why a link does not work: a page for a browser, a line of text for others."""
        if self.html:
            return self.page(status, refusal_page(title, text, hint), extra)
        return self.text(status, f"{text} {hint}".strip(), extra)

    def redirect(self, location: str, extra: list | None = None):
        """303 to a relative address (after a posted form: reloading the page does not post it again)."""
        return self.text(303, "See the page of this link.", [("Location", location), *(extra or [])])
