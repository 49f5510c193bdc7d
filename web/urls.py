from django.urls import path

from . import views

urlpatterns = [
    path("", views.gallery, name="gallery"),
    path("personas/new", views.persona_new, name="persona_new"),
    path("chat/<str:session_id>", views.chat, name="chat"),
    path("ui/assets/<str:name>", views.asset, name="web_asset"),
]
