"""Demo pages: a landing page listing rooms, a whiteboard, a chat and a poll.

Plain Django templates and one ES module (the JavaScript client, served from
``clients/js/dorm.js`` at ``/static/dorm/dorm.js``): no build step. A
logged-in user's page joins with room tokens from ``/api/rooms/<slug>/token``
(and refreshes them on 4401); otherwise, on development servers, with
``?userId=`` (anonymous access).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Max
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from rooms.conf import dorm_settings
from rooms.kinds.poll import MAX_OPTIONS
from rooms.models import ROOM_SLUG_PATTERN, Room, slug_validator
from rooms.protocol import ROOM_ID_RE, now_ms

CLIENT_JS = Path(settings.BASE_DIR) / "clients" / "js" / "dorm.js"

# Kinds that have a demo page, and the template of each.
PAGE_TEMPLATES = {"whiteboard": "dorm/whiteboard.html", "chat": "dorm/chat.html", "poll": "dorm/poll.html"}


def poll_settings(question: str, options: str, minutes: str) -> dict[str, Any]:
    """A new poll's settings from the landing form: ``options`` separated by
    commas (none: the kind's default, yes/no), an optional question and an
    optional deadline in minutes from now. ValueError with a message for the page."""
    settings_: dict[str, Any] = {}
    names = [o.strip() for o in options.split(",") if o.strip()]
    if names:
        if not 2 <= len(names) <= MAX_OPTIONS or any(len(o) > 200 for o in names):
            raise ValueError(f"A poll has 2-{MAX_OPTIONS} options of at most 200 characters, separated by commas.")
        settings_["options"] = names
    if question.strip():
        settings_["question"] = question.strip()[:1000]
    if minutes.strip():
        try:
            value = float(minutes)
        except ValueError:
            value = 0.0
        if not 0 < value <= 60 * 24 * 366:
            raise ValueError("The deadline is a number of minutes from now, more than 0.")
        settings_["closesAt"] = now_ms() + round(value * 60_000)
    return settings_


@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    """The rooms, newest first, and a form that opens (or creates) one."""
    error = ""
    if request.method == "POST":
        slug = request.POST.get("slug", "").strip()
        kind = request.POST.get("kind", "whiteboard")
        if not ROOM_ID_RE.fullmatch(slug) or kind not in PAGE_TEMPLATES:
            error = "Room ids are 1-64 characters of A-Z, a-z, 0-9, _ and -."
        else:
            try:
                room_settings = (
                    poll_settings(
                        request.POST.get("question", ""), request.POST.get("options", ""), request.POST.get("minutes", "")
                    )
                    if kind == "poll"
                    else {}
                )
            except ValueError as exc:
                error = str(exc)
            else:
                # An existing room keeps its kind and settings.
                room, _ = Room.objects.get_or_create(slug=slug, defaults={"kind": kind, "settings": room_settings})
                return HttpResponseRedirect(reverse("dorm-room-page", args=[room.slug]))
    rooms = (
        Room.objects.annotate(latest_seq=Max("events__seq"), event_count=Count("events"))
        .order_by("-created_at")[:200]
    )
    return render(
        request,
        "dorm/index.html",
        {"rooms": rooms, "kinds": list(PAGE_TEMPLATES), "error": error, "slug_pattern": ROOM_SLUG_PATTERN},
    )


@require_GET
def room_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The demo page of a room; ``?kind=chat`` (or ``poll``) creates a missing
    room of that kind (a poll with the kind's default options, yes/no)."""
    slug_validator(slug)
    room = Room.objects.filter(slug=slug).first()
    if room is None:
        kind = request.GET.get("kind", "whiteboard")
        if kind not in PAGE_TEMPLATES:
            raise Http404("no demo page for that kind")
        room, _ = Room.objects.get_or_create(slug=slug, defaults={"kind": kind})
    template = PAGE_TEMPLATES.get(room.kind)
    if template is None:
        raise Http404(f"no demo page for rooms of kind {room.kind}")
    mode = auth_mode(request)
    # The token API takes the session with Django's CSRF token (and this sets its cookie).
    auth = {"mode": mode, "csrf": get_token(request) if mode == "session" else ""}
    return render(request, template, {"room": room, "auth": auth})


def auth_mode(request: HttpRequest) -> str:
    """How a page joins: ``session`` (a logged-in user fetches room tokens
    from /api/rooms/<slug>/token), ``anonymous`` (``?userId=``, development
    servers) or ``login`` (neither: the page asks to log in)."""
    if request.user.is_authenticated:
        return "session"
    if dorm_settings.ALLOW_ANONYMOUS:
        return "anonymous"
    return "login"


@require_GET
def client_js(request: HttpRequest) -> FileResponse:
    """The JavaScript client as an ES module (works under daphne and uvicorn
    without a static-files server; ``collectstatic`` is not needed)."""
    response = FileResponse(CLIENT_JS.open("rb"), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return response
