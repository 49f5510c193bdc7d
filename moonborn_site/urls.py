from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts.views import usage_list
from chat import streams as chat_streams
from chat import views as chat_views
from personas import card_views
from personas import streams as persona_streams
from personas import views as persona_views
from runs.health import health

from . import docs
from .routing import by_method

api = [
    path("personas", by_method(get=persona_views.persona_list, post=persona_streams.persona_create)),
    path("personas/import", by_method(post=card_views.persona_import_view)),
    path("personas/<str:persona_id>/card", by_method(get=card_views.persona_card_view)),
    path(
        "personas/<str:persona_id>",
        by_method(get=persona_views.persona_detail, delete=persona_streams.persona_delete),
    ),
    path("personas/<str:persona_id>/events", by_method(get=persona_streams.persona_events)),
    path("personas/<str:persona_id>/cancel", by_method(post=persona_streams.persona_cancel)),
    path("chat/sessions", by_method(get=chat_views.session_list, post=chat_views.session_list)),
    path(
        "chat/sessions/<str:session_id>",
        by_method(get=chat_views.session_detail, delete=chat_streams.session_delete),
    ),
    path(
        "chat/sessions/<str:session_id>/messages",
        by_method(get=chat_views.message_list, post=chat_streams.message_create),
        name="chat-messages",
    ),
    path(
        "chat/sessions/<str:session_id>/messages/<str:message_id>",
        by_method(get=chat_views.message_detail),
    ),
    path(
        "chat/sessions/<str:session_id>/messages/<str:message_id>/events",
        by_method(get=chat_streams.message_events),
    ),
    path(
        "chat/sessions/<str:session_id>/messages/<str:message_id>/cancel",
        by_method(post=chat_streams.message_cancel),
    ),
    path("usage", by_method(get=usage_list)),
]

# Routes whose API-key requests an ASGI view serves first, by URL name (moonborn_site.handlers.ByCredentials).
asgi_views = {"chat-messages": chat_streams.message_create_asgi}

urlpatterns = [
    path("", include("web.urls")),
    path("healthz", health),
    path("admin/", admin.site.urls),
    # Login, logout and password change only: API-key users have no e-mail flow, and a password reset link is a
    # way in that nothing here needs.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    # The API's own documentation (moonborn_site.docs): public, and not part of the API it describes.
    path("v1/openapi.json", docs.schema_view, name=docs.SCHEMA_URL_NAME),
    path("v1/docs", docs.swagger_view, name="openapi-swagger-ui"),
    path("v1/redoc", docs.redoc_view, name="openapi-redoc"),
    path(f"{settings.STATIC_URL.strip('/')}/drf_spectacular_sidecar/<path:name>", docs.sidecar_asset),
    path("v1/", include(api)),
]
