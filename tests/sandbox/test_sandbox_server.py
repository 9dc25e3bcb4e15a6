"""Running the emulators: lifecycle, environment, concurrency, control, command."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from relay.config import Settings
from relay.sandbox import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_INTERCOM_ADMIN_ID,
    SANDBOX_WORKSPACE_ID,
    SANDBOX_ZENDESK_SECRET,
    SANDBOX_ZENDESK_TOKEN,
    Sandbox,
    SandboxControl,
    bugpilot,
    intercom,
    main,
    sandbox_defaults,
    sandbox_environment,
    zendesk,
)


def test_urls_need_a_running_sandbox() -> None:
    with pytest.raises(RuntimeError):
        _ = Sandbox().bugpilot_url


def test_start_serves_three_ports_and_stop_closes_them() -> None:
    sandbox = Sandbox().start()
    urls = [sandbox.bugpilot_url, sandbox.zendesk_url, sandbox.intercom_url]
    states = [requests.get(f"{url}/_sandbox/state", timeout=5) for url in urls]

    sandbox.stop()

    assert len(set(urls)) == 3
    assert [state.json()["service"] for state in states] == [
        "bugpilot",
        "zendesk",
        "intercom",
    ]
    for url in urls:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/_sandbox/state", timeout=5)


def test_a_stopped_sandbox_can_start_again() -> None:
    sandbox = Sandbox()
    with sandbox:
        pass
    with sandbox:
        state = requests.get(f"{sandbox.zendesk_url}/_sandbox/state", timeout=5)
        assert state.status_code == 200


def test_a_taken_port_is_an_os_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(OSError):
            Sandbox(ports=(0, port, 0)).start()


def test_the_environment_is_valid_relay_settings(sandbox: Sandbox) -> None:
    env = sandbox_environment(sandbox)

    settings = Settings.from_env(env)

    assert settings.bugpilot_api_url == sandbox.bugpilot_url
    assert settings.bugpilot_api_key == SANDBOX_BUGPILOT_API_KEY
    assert settings.bugpilot_workspace_id == SANDBOX_WORKSPACE_ID
    assert settings.zendesk is not None and settings.intercom is not None
    assert settings.zendesk.url == sandbox.zendesk_url
    assert settings.zendesk.api_token == SANDBOX_ZENDESK_TOKEN
    assert settings.zendesk.webhook_secrets == (SANDBOX_ZENDESK_SECRET,)
    assert settings.intercom.api_url == sandbox.intercom_url
    assert settings.intercom.admin_id == SANDBOX_INTERCOM_ADMIN_ID


def test_defaults_name_the_fixed_ports() -> None:
    env = sandbox_defaults()

    assert env["BUGPILOT_API_URL"] == "http://127.0.0.1:8081"
    assert env["ZENDESK_URL"] == "http://127.0.0.1:8082"
    assert env["INTERCOM_API_URL"] == "http://127.0.0.1:8083"
    assert sandbox_defaults((1, 2, 3))["INTERCOM_API_URL"] == "http://127.0.0.1:3"


def test_concurrent_actions_are_all_counted(sandbox: Sandbox) -> None:
    headers = {
        "User-Agent": "Bugpilot API Client/1.0",
        "X-Bugpilot-Api-Key": SANDBOX_BUGPILOT_API_KEY,
    }

    def act(number: int) -> str:
        body = {
            "workspaceId": SANDBOX_WORKSPACE_ID,
            "userId": "user-123",
            "action": "upload-session",
            "userProvidedDescription": f"call {number}",
        }
        response = requests.post(
            f"{sandbox.bugpilot_url}/api/v1/action",
            json=body,
            headers=headers,
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["sessionInfoUrl"])

    with ThreadPoolExecutor(max_workers=50) as pool:
        urls = list(pool.map(act, range(200)))

    state = SandboxControl(sandbox.bugpilot_url).state()
    assert len(set(urls)) == 200
    assert len(state["sessions"]) == 200
    assert sorted(entry["seq"] for entry in state["actions"]) == list(range(1, 201))
    assert len(state["ok_by_description"]) == 200
    assert state["requests"] == {"POST /api/v1/action": 200}


def test_concurrent_comments_on_one_ticket_are_all_kept(sandbox: Sandbox) -> None:
    def comment(number: int) -> int:
        response = requests.put(
            f"{sandbox.zendesk_url}/api/v2/tickets/35436",
            json={"ticket": {"comment": {"body": f"n{number}", "public": False}}},
            headers={"Authorization": f"Bearer {SANDBOX_ZENDESK_TOKEN}"},
            timeout=10,
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(comment, range(200)))

    ticket = SandboxControl(sandbox.zendesk_url).state()["tickets"]["35436"]
    assert statuses == [200] * 200
    assert sorted(ticket["comment_bodies"]) == sorted(f"n{n}" for n in range(200))
    assert len({comment["id"] for comment in ticket["comments"]}) == 200


@pytest.mark.parametrize(
    "create_app", [bugpilot.create_app, zendesk.create_app, intercom.create_app]
)
def test_control_endpoints_answer_loopback_only(create_app: object) -> None:
    app = create_app()  # type: ignore[operator]
    client = app.test_client()

    remote = client.get(
        "/_sandbox/state", environ_overrides={"REMOTE_ADDR": "10.1.2.3"}
    )
    local = client.get(
        "/_sandbox/state", environ_overrides={"REMOTE_ADDR": "127.0.0.1"}
    )

    assert remote.status_code == 403
    assert local.status_code == 200


def test_the_control_client_drives_each_emulator(sandbox: Sandbox) -> None:
    bp = SandboxControl(sandbox.bugpilot_url + "/")
    zd = SandboxControl(sandbox.zendesk_url)
    ic = SandboxControl(sandbox.intercom_url)

    assert "amy" in bp.set_online(["amy"])["online"]
    assert "amy" not in bp.set_offline(["amy"])["online"]
    assert bp.set_all_online()["all_online"] is True
    assert bp.settings(report_after_polls=3) == {"report_after_polls": 3}
    assert bp.settings() == {"report_after_polls": 3}
    assert bp.set_faults(latency_ms=1)["settings"]["latency_ms"] == 1
    assert bp.faults()["settings"]["latency_ms"] == 1
    assert bp.clear_faults()["settings"]["latency_ms"] == 0
    assert zd.add_user(email="x@example.com")["email"] == "x@example.com"
    assert zd.add_ticket(id=12)["id"] == 12
    assert ic.add_contact(id="c9")["id"] == "c9"
    assert ic.add_conversation(id="9", contact_id="c9")["id"] == "9"
    assert ic.add_tag(id="5", name="five") == {"type": "tag", "id": "5", "name": "five"}

    with pytest.raises(requests.HTTPError):
        zd.set_users(online=["amy"])


def test_wait_for_polls_until_the_state_matches(sandbox: Sandbox) -> None:
    ctl = SandboxControl(sandbox.zendesk_url)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            ctl.add_ticket(id=77)

    state = ctl.wait_for(lambda s: "77" in s["tickets"], sleep=nap, interval=0.5)

    assert "77" in state["tickets"]
    assert naps == [0.5, 0.5]


def test_wait_for_gives_up_at_the_deadline(sandbox: Sandbox) -> None:
    ctl = SandboxControl(sandbox.zendesk_url)
    now = [0.0]

    def nap(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(TimeoutError):
        ctl.wait_for(lambda s: False, timeout=1.0, sleep=nap, clock=lambda: now[0])

    assert now[0] == pytest.approx(1.0)


def test_the_command_serves_until_sigterm() -> None:
    code = (
        "import sys; from relay.sandbox.server import main; "
        "sys.exit(main(['--bugpilot-port', '0', '--zendesk-port', '0', "
        "'--intercom-port', '0', '--quiet']))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        try:
            lines = []
            for line in process.stdout:
                lines.append(line.strip())
                if line.startswith("Stop with"):
                    break
            urls = dict(line.split()[:2] for line in lines[:3])
            env = dict(
                line.removeprefix("export ").split("=", 1)
                for line in lines
                if line.startswith("export ")
            )
            state = requests.get(f"{urls['Zendesk']}/_sandbox/state", timeout=5)

            process.send_signal(signal.SIGTERM)
            rest = process.stdout.read()
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()

    assert state.json()["service"] == "zendesk"
    assert env["ZENDESK_URL"] == urls["Zendesk"]
    assert env["INTERCOM_ADMIN_ID"] == SANDBOX_INTERCOM_ADMIN_ID
    assert "Sandbox stopped." in rest


def test_the_command_fails_cleanly_on_a_taken_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        status = main(
            ["--bugpilot-port", port, "--zendesk-port", "0"], out=io.StringIO()
        )

    assert status == 1
    assert "cannot listen" in capsys.readouterr().err
