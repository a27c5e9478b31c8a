"""The bookinfo apps of pilotfish.demo, wired straight to each other (no Envoy in between)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pilotfish.demo.apps import (
    DETAILS_UNAVAILABLE,
    RATINGS_UNAVAILABLE,
    REVIEWS_UNAVAILABLE,
    App,
    Details,
    ProductPage,
    Ratings,
    Reviews,
    wire,
)


def get(app: App, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(app.host, app.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@dataclass
class Bookinfo:
    productpage: ProductPage
    details: Details
    reviews: Reviews
    ratings: Ratings


def bookinfo(reviews_version: str, **productpage_args: Any) -> Iterator[Bookinfo]:
    with (
        Ratings() as ratings,
        Details() as details,
        Reviews(reviews_version) as reviews,
        ProductPage(**productpage_args) as productpage,
    ):
        wire(reviews, ratings)
        wire(productpage, details, reviews)
        yield Bookinfo(productpage, details, reviews, ratings)


@pytest.fixture
def v1() -> Iterator[Bookinfo]:
    yield from bookinfo("v1")


@pytest.fixture
def v2() -> Iterator[Bookinfo]:
    yield from bookinfo("v2", reviews_timeout=0.3)


def test_productpage_shows_details_and_reviews_v1(v1: Bookinfo) -> None:
    status, page = get(v1.productpage, "/productpage")
    assert status == 200
    assert page["details"]["author"] == "William Shakespeare"
    assert page["details"]["year"] == 1595
    assert page["reviews"]["version"] == page["reviews_version"] == "v1"
    assert [r["reviewer"] for r in page["reviews"]["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert all("rating" not in r for r in page["reviews"]["reviews"])
    assert page["ratings"] is None
    assert (v1.details.hits, v1.reviews.hits, v1.ratings.hits) == (1, 1, 0)
    assert v1.reviews.last_headers["host"] == "reviews:9080"
    assert v1.details.last_path == "/details/0"


def test_services_answer_their_own_paths(v1: Bookinfo) -> None:
    assert get(v1.ratings, "/ratings/7") == (
        200,
        {"id": 7, "ratings": {"Reviewer1": 5, "Reviewer2": 4}},
    )
    assert get(v1.details, "/details/x")[0] == 400
    assert get(v1.details, "/nope")[0] == 404
    assert get(v1.productpage, "/health")[0] == 200
    assert get(v1.productpage, "/api/v1/products")[1][0]["id"] == 0
    status, reviews = get(v1.productpage, "/api/v1/products/3/reviews")
    assert status == 200 and reviews["id"] == 3


def test_reviews_v2_shows_black_stars(v2: Bookinfo) -> None:
    status, page = get(v2.productpage, "/productpage")
    assert status == 200
    assert page["reviews_version"] == "v2"
    assert page["ratings"] == {
        "Reviewer1": {"stars": 5, "color": "black"},
        "Reviewer2": {"stars": 4, "color": "black"},
    }
    assert v2.ratings.hits == 1
    assert v2.ratings.last_headers["host"] == "ratings:9080"


def test_reviews_v3_shows_red_stars() -> None:
    for app in bookinfo("v3"):
        page = get(app.productpage, "/productpage")[1]
        assert page["reviews"]["reviews"][0]["rating"] == {"stars": 5, "color": "red"}


def test_ratings_failing_makes_reviews_say_ratings_unavailable(v2: Bookinfo) -> None:
    v2.ratings.set_failing(True)
    status, page = get(v2.productpage, "/productpage")
    assert status == 200
    assert page["reviews_version"] == "v2"
    assert all(r["rating"] == {"error": RATINGS_UNAVAILABLE} for r in page["reviews"]["reviews"])
    assert page["ratings"] == {"error": RATINGS_UNAVAILABLE}
    v2.ratings.set_failing(False)
    assert get(v2.productpage, "/productpage")[1]["ratings"]["Reviewer2"]["stars"] == 4


def test_ratings_delay_beyond_productpage_timeout_loses_the_reviews(v2: Bookinfo) -> None:
    # Istio's fault-injection task, scaled down: 7 s -> 0.7 s, productpage's 3 s -> 0.3 s.
    v2.ratings.delay = 0.7
    started = time.monotonic()
    status, page = get(v2.productpage, "/productpage")
    elapsed = time.monotonic() - started
    assert status == 200
    assert page["reviews"] == {"error": REVIEWS_UNAVAILABLE}
    assert page["reviews_version"] is None and page["ratings"] is None
    assert page["details"]["id"] == 0
    assert page["upstream_status"] == {"details": 200, "reviews": None}
    assert 0.3 <= elapsed < 0.7


def test_details_failing_is_shown_as_an_error(v1: Bookinfo) -> None:
    v1.details.fail_next(1)
    page = get(v1.productpage, "/productpage")[1]
    assert page["details"] == {"error": DETAILS_UNAVAILABLE}
    assert page["upstream_status"]["details"] == 503
    assert page["reviews_version"] == "v1"


def test_end_user_and_tracing_headers_reach_ratings(v2: Bookinfo) -> None:
    trace = {"x-request-id": "req-1", "x-b3-traceid": "abc", "traceparent": "00-1-2-01"}
    page = get(v2.productpage, "/productpage", {"end-user": "jason", **trace})[1]
    assert page["user"] == "jason"
    seen = v2.ratings.last_headers
    assert seen["end-user"] == "jason"
    assert {name: seen[name] for name in trace} == trace
    # the real productpage's way: a login cookie
    page = get(v2.productpage, "/productpage", {"cookie": "session=1; user=alice"})[1]
    assert page["user"] == "alice"
    assert v2.ratings.last_headers["end-user"] == "alice"
    assert v2.details.last_headers["end-user"] == "alice"


def test_fail_next_fails_exactly_n_requests() -> None:
    with Details() as details:
        details.fail_next(2, status=503)
        statuses = [get(details, "/details/0")[0] for _ in range(3)]
        assert statuses == [503, 503, 200]
        details.set_failing(True)
        assert get(details, "/details/0")[0] == 500
        details.set_failing(False)
        assert get(details, "/details/0")[0] == 200
        assert details.hits == 5


def test_keep_alive_and_stop_closes_the_socket() -> None:
    details = Details().start()
    conn = http.client.HTTPConnection(details.host, details.port, timeout=5)
    for _ in range(2):  # same connection, twice
        conn.request("GET", "/details/1")
        response = conn.getresponse()
        assert response.getheader("x-bookinfo-app") == "details-v1"
        assert json.loads(response.read())["id"] == 1
    port = details.port
    details.stop()
    conn.close()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()


def test_no_outbound_address_means_unavailable() -> None:
    with ProductPage() as productpage:
        page = get(productpage, "/productpage")[1]
    assert page["details"] == {"error": DETAILS_UNAVAILABLE}
    assert page["reviews"] == {"error": REVIEWS_UNAVAILABLE}


def test_reviews_delay_beyond_productpage_timeout_loses_the_reviews(v2: Bookinfo) -> None:
    v2.reviews.delay = 0.5
    page = get(v2.productpage, "/productpage")[1]
    assert page["reviews"] == {"error": REVIEWS_UNAVAILABLE}
    assert page["details"]["author"] == "William Shakespeare"
