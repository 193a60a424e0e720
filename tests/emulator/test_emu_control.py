"""Control and introspection: state snapshot, clock, reset, request ids, HEAD downloads."""

from __future__ import annotations

from emu_helpers import KEY_HEADERS, Client, MakeClient, png_bytes

from agent.emulator import build_app


async def test_snapshot_and_python_state_agree(client: Client) -> None:
    done = await client.convert(png_bytes(), "a.png", "jpg")
    snapshot = await client.control("state")
    state = client.emulator.state
    assert snapshot["jobs"][0]["id"] == done["id"] == next(iter(state.jobs))
    assert state.jobs[done["id"]].starts == snapshot["jobs"][0]["starts"] == 1
    routes = [r["route"] for r in snapshot["requests"]]
    assert routes[:3] == ["create", "upload", "start"] and set(routes[3:]) == {"get"}


async def test_head_download_is_not_counted(client: Client) -> None:
    done = await client.convert(png_bytes(), "a.png", "jpg")
    uri = done["output"][0]["uri"]
    async with client.session.head(uri) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == done["output"][0]["size"]
    assert (await client.get(done["id"]))["output"][0]["downloads_counter"] == 0


async def test_clock_endpoint_advances_and_changes_speed(client: Client) -> None:
    before = await client.control("clock", {"advance": 0})
    after = await client.control("clock", {"advance": 86400, "speed": 2})
    assert after["speed"] == 2 and after["now"][:10] != before["now"][:10]
    async with client.session.post(
        f"{client.emulator.origin}/_emulator/clock", json={"speed": 0}
    ) as r:
        assert r.status == 400


async def test_reset_forgets_everything(make_client: MakeClient) -> None:
    client = await make_client(credits=1)
    await client.convert(png_bytes(), "a.png", "jpg")
    await client.control("faults", [{"route": "get", "kind": "html"}])
    await client.control("reset", {})
    state = await client.control("state")
    assert state["jobs"] == [] and state["faults"] == [] and state["credits_remaining"] == 1


async def test_api_responses_carry_a_request_id(client: Client) -> None:
    async with client.session.get(f"{client.base}/jobs", headers=KEY_HEADERS) as r:
        assert r.headers["X-Request-Id"].startswith("emu-")


async def test_unknown_api_path_is_404_json(client: Client) -> None:
    async with client.session.get(f"{client.base}/nothing") as r:
        assert r.status == 404 and (await r.json())["message"]


def test_build_app_needs_no_running_server() -> None:
    app = build_app()
    assert any(r.name == "create" for r in app.router.routes())
