"""Demo pages: a landing page listing rooms, a whiteboard and a chat.

Plain Django templates and one ES module (the JavaScript client, served from
``clients/js/dorm.js`` at ``/static/dorm/dorm.js``): no build step. A
logged-in user's page joins with room tokens from ``/api/rooms/<slug>/token``
(and refreshes them on 4401); otherwise, on development servers, with
``?userId=`` (anonymous access).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db.models import Count, Max
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from rooms.conf import dorm_settings
from rooms.models import ROOM_SLUG_PATTERN, Room, slug_validator
from rooms.protocol import ROOM_ID_RE

CLIENT_JS = Path(settings.BASE_DIR) / "clients" / "js" / "dorm.js"

# Kinds that have a demo page, and the template of each.
PAGE_TEMPLATES = {"whiteboard": "dorm/whiteboard.html", "chat": "dorm/chat.html"}


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
            room, _ = Room.objects.get_or_create(slug=slug, defaults={"kind": kind})
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
    """The demo page of a room; ``?kind=chat`` creates a missing room as a chat."""
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
