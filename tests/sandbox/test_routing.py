"""The stand-ins' small router, served by their server over real sockets."""

from __future__ import annotations

import httpx
import trio

from sandbox._routing import Request, Response, Router, json_response
from sandbox._standin_server import serve_standin


def router() -> Router:
    app = Router(not_found=lambda request: json_response({"missing": request.path}, 404))

    @app.route("GET", "/things/<thing_id>.json", "/alias/<thing_id>")
    async def get_thing(request: Request) -> Response:
        return json_response({"id": request.params["thing_id"], "args": request.all_args()})

    @app.route("POST", "/things")
    async def post_thing(request: Request) -> Response:
        return json_response(
            {"form": request.form(), "json": request.json(), "host": request.host_url}, 201
        )

    return app


async def test_routes_params_and_bodies() -> None:
    with trio.fail_after(10):
        async with serve_standin(router()) as url, httpx.AsyncClient() as http:
            thing = await http.get(f"{url}/things/a%20b.json?x=1&x=2&y=")
            alias = await http.get(f"{url}/alias/c")
            form = await http.post(f"{url}/things", data={"k": ["1", "2"]})
            as_json = await http.post(f"{url}/things", json={"k": 3})
    assert thing.json() == {"id": "a b", "args": {"x": ["1", "2"], "y": [""]}}
    assert thing.headers["content-type"] == "application/json"
    assert int(thing.headers["content-length"]) == len(thing.content)
    assert alias.json()["id"] == "c"
    assert form.status_code == 201
    assert form.json()["form"] == {"k": ["1", "2"]}
    assert form.json()["json"] is None
    assert form.json()["host"] == url
    assert as_json.json()["json"] == {"k": 3}


async def test_unknown_paths_and_wrong_methods() -> None:
    with trio.fail_after(10):
        async with serve_standin(router()) as url, httpx.AsyncClient() as http:
            missing = await http.get(f"{url}/nothing/here")
            wrong = await http.delete(f"{url}/things")
    assert (missing.status_code, missing.json()) == (404, {"missing": "/nothing/here"})
    assert wrong.status_code == 405
    assert "DELETE" in wrong.json()["error"]
