"""Django views in real worker processes on Redis: the test plays the interface server.

One private Redis and one migrated SQLite database for the module; two
``paas-channels run worker`` processes (so a session or login made on one is
used on the other); the test puts ``http.request`` messages on the layer and
reads ``http.response`` messages from its inbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from tests.worker_client import ExampleStack, multipart

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def stack():
    stack = ExampleStack()
    try:
        stack.worker("--threads", "3")
        stack.worker("--threads", "3")
        yield stack
    finally:
        stack.close()


@pytest.fixture
def client(stack):
    return stack.client()


def test_form_post_with_csrf(client):
    page = client.get("/form/")
    assert page.status == 200 and "csrftoken" in client.cookies
    response = client.post_form("/form/", {"name": "Ada", "color": "green"}, csrf_from="/form/")
    assert response.status == 200
    assert "Hello, Ada! You picked green." in response.text


def test_form_post_without_csrf_token_is_refused(client):
    response = client.post_form("/form/", {"name": "Ada", "color": "green"})
    assert response.status == 403


def test_cookie_session_is_kept_across_requests_and_workers(client):
    counts = [client.get("/counter/").text for _ in range(6)]
    # Six requests spread over two worker processes, one session.
    assert counts == [f"count={n}" for n in range(1, 7)]
    other = client.__class__(client.layer)
    assert other.get("/counter/").text == "count=1"


def test_signup_then_login_sets_request_user(client, stack):
    assert client.get("/whoami/").text == "anonymous"
    response = client.post_form(
        "/signup/", {"username": "grace", "password1": "Hopper-1906-cobol", "password2": "Hopper-1906-cobol"},
        csrf_from="/signup/",
    )
    assert response.status == 302, response.text[:500]
    assert client.get("/whoami/").text == "grace"

    fresh = stack.client()
    assert fresh.get("/whoami/").text == "anonymous"
    response = fresh.post_form("/login/", {"username": "grace", "password": "wrong"}, csrf_from="/login/")
    assert response.status == 200 and "Wrong username or password" in response.text
    response = fresh.post_form("/login/", {"username": "grace", "password": "Hopper-1906-cobol"}, csrf_from="/login/")
    assert response.status == 302 and response.header("location") == "/"
    assert fresh.get("/whoami/").text == "grace"


def test_streaming_response_arrives_part_by_part(client):
    reply = client.send_request("GET", "/stream/", query={"n": 4, "delay": 0.4})
    arrivals, body = [], b""
    message = client.next_for(reply, timeout=10)
    assert message["status"] == 200 and dict(message["headers"]).get(b"Content-Type") == b"text/plain"
    while True:
        arrivals.append(time.monotonic())
        body += message["content"]
        if not message["more_content"]:
            break
        message = client.next_for(reply, timeout=10)
        assert message is not None
    lines = body.decode().splitlines()
    assert [line.split(" at ")[0] for line in lines] == ["line 0", "line 1", "line 2", "line 3"]
    # The first line arrived long before the stream ended: it was not buffered.
    assert arrivals[-1] - arrivals[0] > 0.8


def test_large_response_is_sent_in_chunks_under_the_message_limit(client):
    response = client.get("/data/3000000/")
    assert response.status == 200 and len(response.body) == 3_000_000
    assert response.body[:512] == bytes(range(256)) * 2
    assert response.messages >= 12  # 256 KiB per message


def test_file_response_is_read_in_message_sized_blocks(client):
    response = client.get("/download/1048576/")
    assert response.status == 200 and len(response.body) == 1048576
    assert response.body[256:512] == bytes(range(256))
    assert response.header("content-disposition") == 'attachment; filename="data.bin"'
    assert response.messages <= 6  # 256 KiB blocks, not Django's 4 KiB (256 messages)


def test_head_gets_headers_without_body(client):
    response = client.request("HEAD", "/data/1000/")
    assert response.status == 200 and response.body == b"" and response.header("content-length") == "1000"


def test_three_megabyte_upload_through_body_channel(client):
    data = os.urandom(3 * 1024 * 1024)
    client.get("/upload/")
    body, content_type = multipart("file", "photo.bin", data)
    reply = client.send_request(
        "POST", "/upload/", body=body, content_type=content_type,
        headers=[(b"x-csrftoken", client.cookies["csrftoken"].encode())],
    )
    response = client.response(reply, timeout=20)
    assert response.status == 200, response.text[:500]
    assert json.loads(response.body) == {
        "name": "photo.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_disallowed_host_gets_400(client):
    assert client.get("/whoami/", host="evil.example.com").status == 400
    assert client.get("/whoami/").status == 200


def test_failing_view_is_a_500_and_the_worker_goes_on(client):
    assert client.get("/boom/").status == 500
    assert client.get("/whoami/").status == 200


def test_long_poll_answered_by_a_later_group_send(client, stack):
    waiting = [client.send_request("GET", "/live/") for _ in range(3)]
    gone = client.send_request("GET", "/live/")
    # A request waits once a worker has run its long_poll (it is then in the group).
    # Wait for that, not for a while: http.disconnect is another channel, so a
    # disconnect sent earlier may run first and leave a later-added member behind.
    deadline = time.monotonic() + 10
    while sorted(stack.layer.group_channels("live")) != sorted([*waiting, gone]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(stack.layer.group_channels("live")) == sorted([*waiting, gone]), stack.logs()
    # Nothing answers until someone publishes.
    assert client.next_for(waiting[0], timeout=1.0) is None
    # One client leaves: the interface sends http.disconnect and it leaves the group.
    stack.layer.send("http.disconnect", {"reply_channel": gone, "path": "/live/"})
    deadline = time.monotonic() + 10
    while gone in stack.layer.group_channels("live") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(stack.layer.group_channels("live")) == sorted(waiting)

    publisher = stack.client()
    result = publisher.post_form("/live/publish/", {"text": "news!"})
    assert result.status == 200 and json.loads(result.body) == {"answered": 3}
    for reply in waiting:
        response = client.response(reply, timeout=10)
        assert response.status == 200 and json.loads(response.body) == {"text": "news!"}
    assert client.next_for(gone, timeout=0.5) is None
    assert stack.layer.group_channels("live") == []


def test_websocket_chat_keeps_the_logged_in_user_across_workers(stack):
    client = stack.client()
    response = client.post_form(
        "/signup/", {"username": "ada", "password1": "Lovelace-1815-engine", "password2": "Lovelace-1815-engine"},
        csrf_from="/signup/",
    )
    assert response.status == 302
    path = "/ws/chat/lobby/"
    reply = client.ws_connect(path)
    # Sent at once, so the two workers race for them: ordering and the channel
    # session (where connect stored the user) keep the conversation right.
    for order in range(1, 6):
        client.ws_send(reply, path, order, json.dumps({"text": f"message {order}"}))
    assert client.next_for(reply) == {"accept": True}, stack.logs()
    frames = [client.next_for(reply) for _ in range(6)]
    assert None not in frames, stack.logs()
    frames = [json.loads(frame["text"]) for frame in frames]
    assert frames[0] == {"system": "ada joined lobby"}
    assert frames[1:] == [{"user": "ada", "text": f"message {n}", "room": "lobby"} for n in range(1, 6)]
    client.ws_disconnect(reply, path, 6)
    deadline = time.monotonic() + 10
    while stack.layer.group_channels("chat-lobby") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.layer.group_channels("chat-lobby") == [], stack.logs()
