"""The browser UI: pages rendered by Django, live parts driven by static/web/app.js over the /v1 API."""

from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from chat.models import ChatSession
from personas.models import Persona

ASSETS = Path(settings.BASE_DIR) / "static" / "web"
# Only these files are served, so no request path ever reaches the filesystem unchecked.
ASSET_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


@require_GET
def asset(request: HttpRequest, name: str) -> FileResponse:
    """Serve the UI's own JS and CSS.

    A tiny view instead of WhiteNoise: two files, no new dependency, and it works the same with
    DEBUG on or off (Django's static view is for development only).
    """
    if name not in ASSET_TYPES:
        raise Http404("No such asset.")
    response = FileResponse((ASSETS / name).open("rb"), content_type=ASSET_TYPES[name])
    response["Cache-Control"] = "public, max-age=300"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_GET
def gallery(request: HttpRequest) -> HttpResponse:
    """The user's personas, newest first, each with its chats."""
    personas = (
        Persona.objects.filter(owner_id=request.user.pk).order_by("-created_at").prefetch_related("chat_sessions")
    )
    return render(request, "web/gallery.html", {"personas": personas})


@login_required
@require_GET
def persona_new(request: HttpRequest) -> HttpResponse:
    """The form whose six pipeline steps light up live."""
    return render(request, "web/persona_new.html", {"steps": STEP_LABELS})


@login_required
@require_GET
def chat(request: HttpRequest, session_id: str) -> HttpResponse:
    """One chat session; history and replies are loaded and streamed by app.js."""
    session = get_object_or_404(ChatSession.objects.select_related("persona"), pk=session_id, owner_id=request.user.pk)
    return render(request, "web/chat.html", {"session": session, "persona": session.persona})


STEP_LABELS = [
    ("soul_draft", "Soul draft"),
    ("lore_weave", "Lore weave"),
    ("psyche_profile", "Psyche profile"),
    ("voice_print", "Voice print"),
    ("dialogue_seed", "Dialogue seed"),
    ("card_compile", "Card compile"),
]
