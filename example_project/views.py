"""Views of the example project: ordinary Django views, run by paas-channels workers.

Each page shows one feature: a form POST, sign-up and login, a cookie session,
a streaming response, an upload (a large body arrives through body_channel),
a long-poll endpoint answered later by a group send, a WebSocket chat, and a
background ``thumbnail`` channel.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

from django import forms
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from paas_channels import Channel, Group

#: Group of the requests waiting on /live/ (see consumers.long_poll).
LIVE_GROUP = "live"


class GreetForm(forms.Form):
    name = forms.CharField(max_length=50)
    color = forms.ChoiceField(choices=[("red", "red"), ("green", "green"), ("blue", "blue")])


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


def greet(request: HttpRequest) -> HttpResponse:
    """A form with CSRF protection; a valid POST answers with a greeting."""
    greeting = None
    if request.method == "POST":
        form = GreetForm(request.POST)
        if form.is_valid():
            greeting = f"Hello, {form.cleaned_data['name']}! You picked {form.cleaned_data['color']}."
    else:
        form = GreetForm()
    return render(request, "form.html", {"form": form, "greeting": greeting})


def signup(request: HttpRequest) -> HttpResponse:
    """Create an account and log in (the user lands in the session)."""
    if request.method == "POST":
        form = UserCreationForm(request.POST)
        if form.is_valid():
            user = form.save()
            login(request, user)
            return redirect("home")
    else:
        form = UserCreationForm()
    return render(request, "signup.html", {"form": form})


def whoami(request: HttpRequest) -> HttpResponse:
    """The logged-in user's name, or ``anonymous``: plain text for scripts."""
    name = request.user.get_username() if request.user.is_authenticated else "anonymous"
    return HttpResponse(name, content_type="text/plain")


def counter(request: HttpRequest) -> HttpResponse:
    """A per-visitor counter kept in the cookie session: ``count=N``."""
    request.session["count"] = request.session.get("count", 0) + 1
    return HttpResponse(f"count={request.session['count']}", content_type="text/plain")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """``n`` lines, ``delay`` seconds apart, each sent as soon as it is made."""
    try:
        count = min(int(request.GET.get("n", "5")), 1000)
        delay = min(float(request.GET.get("delay", "0.2")), 5.0)
    except ValueError:
        return HttpResponseBadRequest("n must be an integer and delay a number of seconds")

    def lines():
        for index in range(count):
            if index:
                time.sleep(delay)
            yield f"line {index} at {time.time():.3f}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")


def upload(request: HttpRequest) -> HttpResponse:
    """GET: an upload form.  POST (multipart): the file's name, size and SHA-256 as JSON."""
    if request.method != "POST":
        return render(request, "upload.html")
    uploaded = request.FILES.get("file")
    if uploaded is None:
        return HttpResponseBadRequest("POST a multipart form with a 'file' field")
    digest = hashlib.sha256()
    for chunk in uploaded.chunks():
        digest.update(chunk)
    return JsonResponse({"name": uploaded.name, "size": uploaded.size, "sha256": digest.hexdigest()})


def data(request: HttpRequest, size: int) -> HttpResponse:
    """``size`` bytes of a repeating pattern (at most 8 MiB): a response sent in several chunks."""
    size = min(size, 8 * 1024 * 1024)
    pattern = bytes(range(256))
    body = (pattern * (size // 256 + 1))[:size]
    return HttpResponse(body, content_type="application/octet-stream")


def download(request: HttpRequest, size: int) -> FileResponse:
    """``size`` bytes (at most 8 MiB) as a file download: a FileResponse, streamed in chunks."""
    size = min(size, 8 * 1024 * 1024)
    pattern = bytes(range(256))
    return FileResponse(io.BytesIO((pattern * (size // 256 + 1))[:size]), as_attachment=True, filename="data.bin")


def slow(request: HttpRequest) -> HttpResponse:
    """Sleep ``seconds`` (at most 30), then answer: a slow, I/O-bound view."""
    try:
        seconds = min(float(request.GET.get("seconds", "1")), 30.0)
    except ValueError:
        return HttpResponseBadRequest("seconds must be a number")
    time.sleep(seconds)
    return HttpResponse(f"slept {seconds}", content_type="text/plain")


@csrf_exempt
@require_POST
def live_publish(request: HttpRequest) -> HttpResponse:
    """Answer every request waiting on /live/ with the POSTed ``text``, by one group send."""
    text = request.POST.get("text", "")
    group = Group(LIVE_GROUP)
    waiting = group.channel_layer.group_channels(LIVE_GROUP)
    # immediately: inside a worker sends wait for the view to return, and the
    # members are discarded below, before that.
    group.send({
        "status": 200,
        "headers": [[b"Content-Type", b"application/json"]],
        "content": json.dumps({"text": text}).encode(),
        "more_content": False,
    }, immediately=True)
    # Each waiting request is answered once: take them out of the group.
    for channel in waiting:
        group.discard(channel)
    return JsonResponse({"answered": len(waiting)})


@csrf_exempt
@require_POST
def thumbnail(request: HttpRequest) -> HttpResponse:
    """Queue background work on the ``thumbnail`` channel; a worker does it later."""
    name = request.POST.get("name", "picture.png")
    Channel("thumbnail").send({"name": name, "size": int(request.POST.get("size", "64") or 64)})
    return JsonResponse({"queued": name}, status=202)


def chat(request: HttpRequest, room: str = "lobby") -> HttpResponse:
    """The chat page: a small JavaScript client of the WebSocket chat consumer."""
    return render(request, "chat.html", {"room": room})


def boom(request: HttpRequest) -> HttpResponse:
    """A view that fails: Django answers 500 and the worker goes on."""
    raise RuntimeError("boom: this view fails on purpose")
