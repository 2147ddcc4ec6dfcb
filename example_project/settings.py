"""Settings of the example project: a real Django project using paas-channels.

Everything a platform provides comes from the environment through
``paas_channels.conf.configure`` at the bottom: with no ``REDIS_URL`` it runs
on the in-memory layer (combined mode, one process), with ``REDIS_URL`` on
Redis (split mode: ``web`` and ``worker`` dynos); ``DATABASE_URL`` picks the
database (SQLite by default).
"""

import os
from pathlib import Path

from paas_channels.conf import configure
from paas_channels.layers import layer_class

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = os.environ.get("DEBUG", "") == "1"
# A demo: a fixed key when none is given, so `paas-channels run --combined` just works.
# app.json generates a real one on Heroku.
SECRET_KEY = os.environ.get("SECRET_KEY", "example-project-insecure-key-change-me")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "paas_channels",
    "example_project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "example_project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

USE_TZ = True
TIME_ZONE = "UTC"  # log and admin times in UTC, as a platform's logs are
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATICFILES_DIRS = [BASE_DIR / "example_project" / "static"]
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# CHANNEL_LAYERS, DATABASES, ALLOWED_HOSTS, static files and logging from the environment.
configure(globals(), routing="example_project.routing.channel_routing")
# Chat rooms keep their last 100 messages for 5 minutes: a page open through a deploy (web
# processes included) gets what it missed when it reconnects (static/paas_demo/chat.js).
# Every layer keeps history (Redis, RabbitMQ, in-memory, and IPC: combined mode with several
# processes); a layer that did not would refuse the key, and there the chat would work the same,
# a reconnect just would not replay.
if "history" in layer_class(CHANNEL_LAYERS["default"]["BACKEND"]).extensions:
    CHANNEL_LAYERS["default"]["CONFIG"].setdefault("history", {"chat-*": {"size": 100, "ttl": 300}})
