"""Routes of endpoints that serve a WSGI/ASGI app are prefixes (RouteTable.match)."""

from __future__ import annotations

from turnout._sending.route_table import RouteTable
from turnout.v1 import controller_pb2 as pb


def table(*endpoints: pb.Endpoint) -> RouteTable:
    return RouteTable.from_snapshot(pb.RoutingSnapshot(version=1, endpoints=endpoints))


def endpoint(name: str, route: str, app: bool) -> pb.Endpoint:
    return pb.Endpoint(
        name=name,
        route=route,
        methods=["GET"],
        traffic=[pb.TrafficWeight(backend=name, weight=1)],
        serves_app=app,
    )


def matched(routes: RouteTable, path: str) -> str | None:
    found = routes.match(path)
    return found.name if found else None


def test_an_app_serves_its_route_and_every_path_under_it() -> None:
    routes = table(endpoint("api", "/api", app=True))
    assert matched(routes, "/api") == "api"
    assert matched(routes, "/api/") == "api"
    assert matched(routes, "/api/items/1") == "api"
    assert matched(routes, "/apix") is None
    assert matched(routes, "/") is None


def test_a_handler_route_stays_exact() -> None:
    routes = table(endpoint("h", "/h", app=False))
    assert matched(routes, "/h") == "h"
    assert matched(routes, "/h/x") is None


def test_exact_routes_and_longer_prefixes_win() -> None:
    routes = table(
        endpoint("root", "/", app=True),
        endpoint("api", "/api", app=True),
        endpoint("v2", "/api/v2", app=True),
        endpoint("health", "/api/health", app=False),
    )
    assert matched(routes, "/api/health") == "health"
    assert matched(routes, "/api/v2/x") == "v2"
    assert matched(routes, "/api/v1/x") == "api"
    assert matched(routes, "/elsewhere") == "root"


def test_the_script_name_is_the_route_without_a_trailing_slash() -> None:
    routes = table(endpoint("root", "/", app=True), endpoint("api", "/api/", app=True))
    assert [routes.match(p).script_name for p in ("/x", "/api/x")] == ["", "/api"]  # type: ignore[union-attr]


def test_the_routing_page_marks_app_routes_and_cors_policies() -> None:
    plain = endpoint("h", "/h", app=False)
    app = endpoint("api", "/api", app=True)
    app.cors.allow_origins.append("*")
    routes = table(plain, app).describe()["routes"]
    assert "serves_app" not in routes["/h"] and "cors" not in routes["/h"]
    assert routes["/api"]["serves_app"] is True
    assert routes["/api"]["cors"]["allow_origins"] == ["*"]
