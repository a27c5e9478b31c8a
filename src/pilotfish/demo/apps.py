"""Istio's bookinfo services as small local HTTP/JSON apps, each meant to sit behind a sidecar.

Four services, as in https://istio.io/latest/docs/examples/bookinfo/, answering JSON:

- ``details`` (v1): ``GET /details/<id>``: the book's author, year, publisher and so on.
- ``ratings`` (v1): ``GET /ratings/<id>``: ``{"id": id, "ratings": {"Reviewer1": 5, ...}}``.
- ``reviews`` (v1, v2, v3): ``GET /reviews/<id>``: two reviews. v1 does not call ratings; v2
  (black stars) and v3 (red stars) call ``ratings`` and add a ``rating`` to each review, or
  ``{"error": "Ratings service is currently unavailable"}`` when that call fails.
- ``productpage`` (v1): ``GET /productpage`` calls ``details`` and ``reviews`` and answers with
  both (or an error for each one that failed); also ``/api/v1/products[/<id>[/reviews|/ratings]]``.

Every app also answers ``GET /health``, binds 127.0.0.1 on a port chosen by the OS, serves
HTTP/1.1 with keep-alive from a background thread, and counts what it served (``hits``,
``last_headers``). Tests can make it slow (``delay``) or fail (``fail_next``, ``set_failing``).

Outbound calls are made the way an app in a mesh makes them: to ``http://reviews:9080/...``,
which the caller's own sidecar routes by ``Host``. Here the connection goes to ``upstreams[name]``
if set, else to ``outbound`` (the address of the app's sidecar outbound listener), always with
``Host: <name>:9080``. Pointing ``upstreams`` straight at another app (``wire``) runs bookinfo
without Envoy. Tracing headers, ``end-user`` and the other headers the real bookinfo forwards are
copied from the incoming request to the outbound ones.

    .venv/bin/python -m pilotfish.demo.apps [--reviews v2]   # all four, wired directly
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar, Self

from pilotfish.httpthread import HttpService, ThreadedHttp

__all__ = [
    "DETAILS_UNAVAILABLE",
    "PROPAGATED_HEADERS",
    "RATINGS_UNAVAILABLE",
    "REVIEWS_UNAVAILABLE",
    "SERVICE_PORT",
    "Address",
    "App",
    "Details",
    "ProductPage",
    "Ratings",
    "Reply",
    "Request",
    "Reviews",
    "authority",
    "main",
    "wire",
]

Address = tuple[str, int]
"""(host, port) to connect to."""

SERVICE_PORT = 9080
"""The port in every bookinfo service's authority: outbound calls carry ``Host: <name>:9080``."""

DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"
NUMERIC_ID = "please provide numeric product ID"

PROPAGATED_HEADERS = (
    # The list the real productpage forwards (istio/istio samples/bookinfo), plus end-user and b3.
    "x-request-id",
    "end-user",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
)
"""Incoming headers (lower-case) copied onto every outbound call."""

PRODUCT: dict[str, Any] = {
    "id": 0,
    "title": "The Comedy of Errors",
    "descriptionHtml": "<a href='https://en.wikipedia.org/wiki/The_Comedy_of_Errors'>Wikipedia"
    " Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays.",
}
REVIEWS: tuple[tuple[str, str], ...] = (
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other"
        " plays by Shakespeare.",
    ),
)
STARS: dict[str, int] = {"Reviewer1": 5, "Reviewer2": 4}
STAR_COLORS: dict[str, str | None] = {"v1": None, "v2": "black", "v3": "red"}


def authority(service: str) -> str:
    """The ``Host`` an app in the mesh uses for `service`: ``reviews`` -> ``reviews:9080``."""
    return f"{service}:{SERVICE_PORT}"


@dataclass(frozen=True)
class Request:
    """An incoming request, as the apps see it."""

    method: str
    path: str  # without the query string
    query: str
    headers: Mapping[str, str]  # lower-case names


@dataclass(frozen=True)
class Reply:
    """The outcome of an outbound call: a status and JSON body, or no response at all."""

    status: int | None  # None: connect error, timeout or broken response
    body: Any = None  # parsed JSON; None if there was no (JSON) body
    error: str = ""

    @property
    def object(self) -> dict[str, Any] | None:
        """The body, if the call answered 200 with a JSON object; None otherwise."""
        if self.status == 200 and isinstance(self.body, dict):
            return self.body
        return None


class _Handler(BaseHTTPRequestHandler):
    # Envoy keeps connections alive: speak HTTP/1.1 and always set content-length.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the peer's
    # delayed ACK (~40 ms per answer, so ~45 ms per product page instead of ~3 ms).
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        path, _, query = self.path.partition("?")
        headers = {name.lower(): value for name, value in self.headers.items()}
        app: App = self.server.owner  # type: ignore[attr-defined]
        status, body = app._handle(Request(self.command, path, query, headers))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-bookinfo-app", app.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = _serve

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging."""


def _with_id(
    pattern: str, request: Request, answer: Callable[[int], tuple[int, Any]]
) -> tuple[int, Any] | None:
    """None if the path does not match `pattern`; 400 if its id is not a number; else answer."""
    match = re.fullmatch(pattern, request.path)
    if match is None:
        return None
    raw = match.group(1)
    if not (raw.isascii() and raw.isdigit()):
        return 400, {"error": NUMERIC_ID}
    return answer(int(raw))


class App(HttpService):
    """One bookinfo service instance: a JSON HTTP server in a background thread.

    `outbound` is the address of this app's own sidecar outbound listener; `upstreams` maps a
    service name to an address that overrides it for that service (both read at call time and
    may be changed while running). `delay` seconds are waited before every answer.
    """

    service: ClassVar[str] = "app"

    def __init__(
        self,
        version: str = "v1",
        *,
        outbound: Address | None = None,
        upstreams: Mapping[str, Address] | None = None,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        podname: str | None = None,
    ) -> None:
        self.version = version
        self.outbound = outbound
        self.upstreams: dict[str, Address] = dict(upstreams or {})
        self.host = host
        self.podname = podname or f"{self.service}-{version}"
        self._lock = threading.Lock()
        self._delay = delay
        self._hits = 0
        self._failures: deque[int] = deque()
        self._failing = False
        self._last_headers: dict[str, str] = {}
        self._last_path = ""
        self._stopping = threading.Event()
        # Polls often: how soon stop() is noticed.
        self._http = ThreadedHttp(_Handler, self, host=host, name=f"bookinfo-{self.name}",
                                  poll_interval=0.02)  # fmt: skip

    @property
    def name(self) -> str:
        """``service-version``, e.g. ``reviews-v2``; also sent as header ``x-bookinfo-app``."""
        return f"{self.service}-{self.version}"

    def __repr__(self) -> str:
        where = self.url if self._http.running else "stopped"
        return f"<{type(self).__name__} {self.name} {where}>"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on `host` and serve in a background thread."""
        if not self._http.running:
            self._stopping.clear()
        return super().start()

    def stop(self) -> None:
        """Stop serving, close the listening socket and the kept-alive connections."""
        if self._http.running:
            self._stopping.set()  # cuts delays short
        super().stop()

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    # -- what tests look at and control ---------------------------------------------------------

    @property
    def hits(self) -> int:
        """Requests received so far, failed, delayed and ``/health`` ones included."""
        with self._lock:
            return self._hits

    @property
    def last_headers(self) -> dict[str, str]:
        """Headers (lower-case names) of the last request received; empty before the first."""
        with self._lock:
            return dict(self._last_headers)

    @property
    def last_path(self) -> str:
        with self._lock:
            return self._last_path

    @property
    def delay(self) -> float:
        with self._lock:
            return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next `n` requests with `status` (after any `delay`); adds to earlier ones."""
        with self._lock:
            self._failures.extend([status] * n)

    def set_failing(self, failing: bool = True) -> None:
        """While on, answer every request with 500 (``fail_next`` ones still come first)."""
        with self._lock:
            self._failing = failing

    def reset(self) -> None:
        """Forget hits, headers and pending failures; stop failing and delaying."""
        with self._lock:
            self._hits = 0
            self._failures.clear()
            self._failing = False
            self._delay = 0.0
            self._last_headers = {}
            self._last_path = ""

    # -- serving --------------------------------------------------------------------------------

    def _handle(self, request: Request) -> tuple[int, Any]:
        with self._lock:
            self._hits += 1
            self._last_headers = dict(request.headers)
            self._last_path = request.path
            delay = self._delay
            failure = self._failures.popleft() if self._failures else None
            if failure is None and self._failing:
                failure = 500
        if delay > 0:
            self._stopping.wait(delay)
        if failure is not None:
            return failure, {"error": f"{self.name} failed (injected)", "status": failure}
        if request.path == "/health":
            return 200, {"status": f"{self.service} is healthy"}
        try:
            return self.route(request)
        except Exception as error:  # a bug here should show up as a 500, not a dropped connection
            return 500, {"error": f"{type(error).__name__}: {error}"}

    def route(self, request: Request) -> tuple[int, Any]:
        """The service's own answer: (status, JSON body). Overridden by each service."""
        return 404, {"error": f"{self.name}: no route for {request.path}"}

    # -- calling other services -----------------------------------------------------------------

    def outbound_headers(self, request: Request) -> dict[str, str]:
        """Headers to send on calls made while serving `request`: the propagated ones."""
        return {
            name: request.headers[name] for name in PROPAGATED_HEADERS if name in request.headers
        }

    def target(self, service: str) -> Address | None:
        """Where a call to `service` connects: ``upstreams[service]``, else ``outbound``."""
        return self.upstreams.get(service, self.outbound)

    def call(self, service: str, path: str, request: Request, timeout: float) -> Reply:
        """``GET http://<service>:9080<path>`` via `target(service)`; never raises."""
        target = self.target(service)
        if target is None:
            return Reply(None, error=f"{self.name}: no outbound address for {service}")
        headers = {**self.outbound_headers(request), "Host": authority(service)}
        conn = http.client.HTTPConnection(target[0], target[1], timeout=timeout)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:  # includes TimeoutError
            return Reply(None, error=f"{type(error).__name__}: {error}")
        finally:
            conn.close()
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = None
        return Reply(response.status, body)


class Details(App):
    """``GET /details/<id>``: the book's details (v1 reads no other service)."""

    service = "details"

    def route(self, request: Request) -> tuple[int, Any]:
        return _with_id(r"/details/([^/]+)", request, self.book) or super().route(request)

    def book(self, product_id: int) -> tuple[int, Any]:
        return 200, {
            "id": product_id,
            "author": "William Shakespeare",
            "year": 1595,
            "type": "paperback",
            "pages": 200,
            "publisher": "PublisherA",
            "language": "English",
            "ISBN-10": "1234567890",
            "ISBN-13": "123-1234567890",
            "version": self.version,
        }


class Ratings(App):
    """``GET /ratings/<id>``: ``{"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}``."""

    service = "ratings"

    def route(self, request: Request) -> tuple[int, Any]:
        return _with_id(r"/ratings/([^/]+)", request, self.stars) or super().route(request)

    def stars(self, product_id: int) -> tuple[int, Any]:
        return 200, {"id": product_id, "ratings": dict(STARS)}


class Reviews(App):
    """``GET /reviews/<id>``: v1 without ratings, v2 with black stars, v3 with red stars.

    v2 and v3 call ``ratings`` with `ratings_timeout` seconds (the real ones: 10 s for v2,
    2.5 s for v3); if that call fails, each review gets ``{"error": RATINGS_UNAVAILABLE}``.
    """

    service = "reviews"

    def __init__(
        self,
        version: str = "v1",
        *,
        ratings_timeout: float | None = None,
        outbound: Address | None = None,
        upstreams: Mapping[str, Address] | None = None,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        podname: str | None = None,
    ) -> None:
        if version not in STAR_COLORS:
            raise ValueError(f"reviews has versions {sorted(STAR_COLORS)}, not {version!r}")
        super().__init__(
            version, outbound=outbound, upstreams=upstreams, delay=delay, host=host, podname=podname
        )
        self.star_color = STAR_COLORS[version]  # None: this version does not call ratings
        if ratings_timeout is None:
            ratings_timeout = 10.0 if self.star_color == "black" else 2.5
        self.ratings_timeout = ratings_timeout

    def route(self, request: Request) -> tuple[int, Any]:
        return _with_id(
            r"/reviews/([^/]+)", request, lambda product_id: self.reviews(product_id, request)
        ) or super().route(request)

    def reviews(self, product_id: int, request: Request) -> tuple[int, Any]:
        reviews: list[dict[str, Any]] = [{"reviewer": who, "text": text} for who, text in REVIEWS]
        if self.star_color is not None:
            reply = self.call("ratings", f"/ratings/{product_id}", request, self.ratings_timeout)
            stars = (reply.object or {}).get("ratings")
            for review in reviews:
                n = stars.get(review["reviewer"]) if isinstance(stars, dict) else None
                if isinstance(n, int):
                    review["rating"] = {"stars": n, "color": self.star_color}
                else:
                    review["rating"] = {"error": RATINGS_UNAVAILABLE}
        return 200, {
            "id": product_id,
            "podname": self.podname,
            "clustername": "null",
            "version": self.version,
            "reviews": reviews,
        }


class ProductPage(App):
    """The front end: ``GET /productpage`` shows details and reviews of product 0.

    Calls ``details`` (`details_timeout` s) and ``reviews`` (`reviews_timeout` s, tried
    `reviews_attempts` times; the real productpage uses 3 s and 2 attempts). The end user is the
    ``end-user`` header, else the ``user`` cookie; it is sent on as ``end-user``. The page::

        {"product": {...}, "user": "jason" | None,
         "details": {...} | {"error": DETAILS_UNAVAILABLE},
         "reviews": {...} | {"error": REVIEWS_UNAVAILABLE},
         "reviews_version": "v1" | "v2" | "v3" | None,
         "ratings": {"Reviewer1": {"stars": 5, "color": "black"}, ...}
                    | {"error": RATINGS_UNAVAILABLE} | None (no reviews, or reviews v1),
         "upstream_status": {"details": 200, "reviews": None (no response) | status}}
    """

    service = "productpage"

    def __init__(
        self,
        version: str = "v1",
        *,
        details_timeout: float = 3.0,
        reviews_timeout: float = 3.0,
        ratings_timeout: float = 3.0,
        reviews_attempts: int = 1,
        outbound: Address | None = None,
        upstreams: Mapping[str, Address] | None = None,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        podname: str | None = None,
    ) -> None:
        super().__init__(
            version, outbound=outbound, upstreams=upstreams, delay=delay, host=host, podname=podname
        )
        self.details_timeout = details_timeout
        self.reviews_timeout = reviews_timeout
        self.ratings_timeout = ratings_timeout
        self.reviews_attempts = reviews_attempts

    @staticmethod
    def user(request: Request) -> str | None:
        """The end user: header ``end-user``, else cookie ``user`` (the real one's login)."""
        if user := request.headers.get("end-user"):
            return user
        cookie: SimpleCookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookie.load(request.headers.get("cookie", ""))
        morsel = cookie.get("user")
        return morsel.value if morsel is not None and morsel.value else None

    def outbound_headers(self, request: Request) -> dict[str, str]:
        headers = super().outbound_headers(request)
        if user := self.user(request):
            headers["end-user"] = user
        return headers

    def details(self, product_id: int, request: Request) -> Reply:
        return self.call("details", f"/details/{product_id}", request, self.details_timeout)

    def reviews(self, product_id: int, request: Request) -> Reply:
        reply = Reply(None, error="no attempt")
        for _ in range(max(1, self.reviews_attempts)):
            reply = self.call("reviews", f"/reviews/{product_id}", request, self.reviews_timeout)
            if reply.object is not None:
                break
        return reply

    def route(self, request: Request) -> tuple[int, Any]:
        path = request.path
        if path in ("/productpage", "/api/v1/productpage"):
            return 200, self.page(0, request)
        if path == "/":
            return 200, {"service": self.service, "links": ["/productpage", "/api/v1/products"]}
        if path == "/api/v1/products":
            return 200, [PRODUCT]
        return _with_id(
            r"/api/v1/products/([^/]+)(?:/reviews|/ratings)?",
            request,
            lambda product_id: self.api(product_id, request),
        ) or super().route(request)

    def api(self, product_id: int, request: Request) -> tuple[int, Any]:
        """``/api/v1/products/<id>[/reviews|/ratings]``: the upstream's answer, or an error."""
        if request.path.endswith("/reviews"):
            reply, unavailable = self.reviews(product_id, request), REVIEWS_UNAVAILABLE
        elif request.path.endswith("/ratings"):
            reply = self.call("ratings", f"/ratings/{product_id}", request, self.ratings_timeout)
            unavailable = RATINGS_UNAVAILABLE
        else:
            reply, unavailable = self.details(product_id, request), DETAILS_UNAVAILABLE
        if reply.object is not None:
            return 200, reply.object
        return reply.status or 500, {"error": unavailable}

    def page(self, product_id: int, request: Request) -> dict[str, Any]:
        details, reviews = self.details(product_id, request), self.reviews(product_id, request)
        shown = reviews.object
        return {
            "product": PRODUCT,
            "user": self.user(request),
            "details": details.object or {"error": DETAILS_UNAVAILABLE},
            "reviews": shown or {"error": REVIEWS_UNAVAILABLE},
            "reviews_version": shown.get("version") if shown is not None else None,
            "ratings": _ratings_summary(shown),
            "upstream_status": {"details": details.status, "reviews": reviews.status},
        }


def _ratings_summary(reviews: dict[str, Any] | None) -> dict[str, Any] | None:
    """Reviewer -> {"stars", "color"}; {"error": ...} if ratings failed; None if none shown."""
    if reviews is None:
        return None
    ratings: dict[str, Any] = {
        str(review.get("reviewer")): review["rating"]
        for review in reviews.get("reviews", [])
        if isinstance(review, dict) and isinstance(review.get("rating"), dict)
    }
    if not ratings:
        return None
    if any("error" in rating for rating in ratings.values()):
        return {"error": RATINGS_UNAVAILABLE}
    return ratings


def wire(app: App, *targets: App) -> App:
    """Point `app`'s calls straight at `targets` (no sidecar): ``upstreams[t.service]``."""
    for target in targets:
        app.upstreams[target.service] = target.address
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run all four services without Envoy, wired straight to each other, until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--reviews", choices=sorted(STAR_COLORS), default="v2")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        ratings = stack.enter_context(Ratings())
        details = stack.enter_context(Details())
        reviews = stack.enter_context(wire(Reviews(args.reviews), ratings).start())
        productpage = stack.enter_context(wire(ProductPage(), details, reviews).start())
        for app in (productpage, details, reviews, ratings):
            print(f"{app.name:16} {app.url}", flush=True)
        print(f"try: curl -s -H 'end-user: jason' {productpage.url}/productpage", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped", flush=True)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
