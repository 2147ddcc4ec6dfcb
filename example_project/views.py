"""Views of the example project: ordinary Django views, run by paas-channels workers.

Each page shows one feature: a form POST, sign-up and login, a cookie session,
a streaming response, an upload (a large body arrives through body_channel),
a long-poll endpoint answered later by a group send, a WebSocket chat whose
messages are stored in the database, and pictures whose thumbnails a worker
makes on the background ``thumbnail`` channel.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

from django import forms
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from paas_channels import Channel, Group

from .models import ChatMessage, Picture, display_name

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
    return HttpResponse(display_name(request.user), content_type="text/plain")


def pid(request: HttpRequest) -> HttpResponse:
    """The id of the process that ran this view: which of a dyno's processes served the request."""
    return HttpResponse(str(os.getpid()), content_type="text/plain")


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
    result = {"name": uploaded.name, "size": uploaded.size, "sha256": digest.hexdigest()}
    if _wants_html(request):  # a browser's form: stay in the site
        return render(request, "upload.html", {"result": result})
    return JsonResponse(result)


def _wants_html(request: HttpRequest) -> bool:
    # Not request.accepts(): it says yes to */*, which scripts (curl, httpx) send.
    return "text/html" in request.headers.get("Accept", "")


def live_page(request: HttpRequest) -> HttpResponse:
    """The long-poll explained: this page waits on /live/, and its button publishes the answer."""
    return render(request, "live.html")


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
        "headers": [[b"Content-Type", b"application/json"], [b"Cache-Control", b"no-store"]],
        "content": json.dumps({"text": text}).encode(),
        "more_content": False,
    }, immediately=True)
    # Each waiting request is answered once: take them out of the group.
    for channel in waiting:
        group.discard(channel)
    if _wants_html(request):
        return render(request, "live.html", {"published": text, "answered": len(waiting)})
    return JsonResponse({"answered": len(waiting)})


#: Largest picture the chat takes (bigger uploads get a 413 that says so).
MAX_PICTURE_BYTES = 5 * 1024 * 1024


def chat(request: HttpRequest, room: str = "lobby") -> HttpResponse:
    """The chat page: the room's recent messages and pictures, then a WebSocket for new ones."""
    display_name(request.user, request.session)  # a guest gets their name now: the page shows it
    recent = ChatMessage.objects.filter(room=room).order_by("-created", "-id")[:50]
    pictures = Picture.objects.filter(room=room, thumbnail__isnull=False).order_by("-created")[:12]
    return render(request, "chat.html", {"room": room, "history": reversed(recent), "pictures": reversed(pictures)})


@require_POST
def post_picture(request: HttpRequest, room: str) -> JsonResponse:
    """Store an image posted to a chat room and answer at once (202).

    The thumbnail is made later by a worker on the ``thumbnail`` channel, which
    then sends it to the room's WebSockets; the database is what the web and
    worker processes share (no disk is).
    """
    uploaded = request.FILES.get("image")
    if uploaded is None:
        return JsonResponse({"error": "POST a multipart form with the picture in an 'image' field"}, status=400)
    if uploaded.size > MAX_PICTURE_BYTES:
        return JsonResponse({"error": f"{uploaded.name} is {uploaded.size} bytes; pictures may have at most "
                                      f"{MAX_PICTURE_BYTES} bytes"}, status=413)
    picture = Picture.objects.create(room=room, name=uploaded.name[:200],
                                     uploaded_by=display_name(request.user, request.session),
                                     image=uploaded.read())
    Channel("thumbnail").send({"picture": picture.pk})
    return JsonResponse({"picture": picture.pk, "thumbnail": "queued"}, status=202)


def picture_thumbnail(request: HttpRequest, pk: int) -> HttpResponse:
    """A picture's thumbnail (PNG) from the database; 404 until the worker has made it."""
    picture = get_object_or_404(Picture.objects.only("thumbnail"), pk=pk, thumbnail__isnull=False)
    response = HttpResponse(bytes(picture.thumbnail), content_type="image/png")
    response["Cache-Control"] = "public, max-age=86400"  # a thumbnail never changes
    return response


def boom(request: HttpRequest) -> HttpResponse:
    """A view that fails: Django answers 500 and the worker goes on."""
    raise RuntimeError("boom: this view fails on purpose")
