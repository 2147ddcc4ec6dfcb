"""URLs of the example project; end-to-end tests rely on them, keep them stable."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("form/", views.greet, name="form"),
    path("signup/", views.signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("whoami/", views.whoami, name="whoami"),
    path("pid/", views.pid, name="pid"),
    path("counter/", views.counter, name="counter"),
    path("stream/", views.stream, name="stream"),
    path("upload/", views.upload, name="upload"),
    path("data/<int:size>/", views.data, name="data"),
    path("download/<int:size>/", views.download, name="download"),
    path("slow/", views.slow, name="slow"),
    path("boom/", views.boom, name="boom"),
    # /live/ itself is answered by a consumer (routing.py), not by a view.
    path("live/publish/", views.live_publish, name="live-publish"),
    path("live/page/", views.live_page, name="live-page"),
    path("chat/", views.chat, name="chat"),
    path("chat/<slug:room>/", views.chat, name="chat-room"),
    path("chat/<slug:room>/pictures/", views.post_picture, name="chat-pictures"),
    path("pictures/<int:pk>/thumbnail.png", views.picture_thumbnail, name="picture-thumbnail"),
    path("admin/", admin.site.urls),
]
