"""Django settings from the environment: paas_channels.conf.configure / settings_from_env."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from paas_channels.conf import configure, settings_from_env
from paas_channels.config.settings import WHITENOISE_MIDDLEWARE, describe_settings, mask_url
from paas_channels.exceptions import ConfigError

from .support import ROOT

BASE = {"SECRET_KEY": "k" * 50}


def test_no_environment_gives_in_memory_layer_and_sqlite(tmp_path):
    values = settings_from_env({"DEBUG": "1"}, base_dir=tmp_path, routing="proj.routing.channel_routing")
    assert values["DEBUG"] is True
    assert values["CHANNEL_LAYERS"] == {
        "default": {
            "BACKEND": "paas_channels.layers.InMemoryChannelLayer",
            "CONFIG": {},
            "ROUTING": "proj.routing.channel_routing",
        }
    }
    database = values["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.sqlite3"
    assert database["NAME"] == str(tmp_path / "db.sqlite3")
    assert "SECURE_PROXY_SSL_HEADER" not in values
    assert values["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]


def test_redis_url_gives_redis_layer_and_several_urls_are_shards(tmp_path):
    one = settings_from_env({**BASE, "REDIS_URL": "redis://h:6379/0"}, base_dir=tmp_path)
    assert one["CHANNEL_LAYERS"]["default"]["BACKEND"] == "paas_channels.layers.RedisChannelLayer"
    assert one["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"] == ["redis://h:6379/0"]
    shards = settings_from_env({**BASE, "REDIS_URL": "redis://a:1/0, redis://b:2/0,redis://c:3/0"}, base_dir=tmp_path)
    assert shards["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"] == ["redis://a:1/0", "redis://b:2/0", "redis://c:3/0"]
    tls = settings_from_env(
        {**BASE, "REDIS_URL": "redis://plain:1/0", "REDIS_TLS_URL": "rediss://secure:2/0"}, base_dir=tmp_path
    )
    assert tls["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"] == ["rediss://secure:2/0"]


def test_bad_redis_url_says_what_to_do_and_hides_the_password(tmp_path):
    with pytest.raises(ConfigError) as info:
        settings_from_env({**BASE, "REDIS_URL": "http://user:hunter2@h:6379"}, base_dir=tmp_path)
    message = str(info.value)
    assert "REDIS_URL" in message and "'http'" in message and "rediss://" in message
    assert "hunter2" not in message


def test_database_url_with_pooling_health_checks_and_heroku_ssl(tmp_path):
    env = {**BASE, "DATABASE_URL": "postgres://app:pw@db.example:5432/prod"}
    database = settings_from_env(env, base_dir=tmp_path)["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"], database["NAME"]) == ("db.example", 5432, "prod")
    assert database["CONN_MAX_AGE"] == 600 and database["CONN_HEALTH_CHECKS"] is True
    assert "sslmode" not in database.get("OPTIONS", {})
    heroku = settings_from_env({**env, "DYNO": "web.1"}, base_dir=tmp_path)["DATABASES"]["default"]
    assert heroku["OPTIONS"]["sslmode"] == "require"
    no_pool = settings_from_env({**env, "CONN_MAX_AGE": "0"}, base_dir=tmp_path)["DATABASES"]["default"]
    assert no_pool["CONN_MAX_AGE"] == 0 and no_pool["CONN_HEALTH_CHECKS"] is False
    # SQLite never gets an sslmode, even on Heroku.
    sqlite = settings_from_env({**BASE, "DYNO": "web.1"}, base_dir=tmp_path)["DATABASES"]["default"]
    assert "sslmode" not in sqlite.get("OPTIONS", {})


def test_bad_database_url_lists_schemes_and_hides_the_password(tmp_path):
    with pytest.raises(ConfigError) as info:
        settings_from_env({**BASE, "DATABASE_URL": "mongo://u:s3cret@h/db"}, base_dir=tmp_path)
    message = str(info.value)
    assert "DATABASE_URL" in message and "postgres" in message and "s3cret" not in message
    with pytest.raises(ConfigError, match="CONN_MAX_AGE"):
        settings_from_env({**BASE, "CONN_MAX_AGE": "forever"}, base_dir=tmp_path)


def test_secret_key_required_outside_debug(tmp_path):
    with pytest.raises(ConfigError) as info:
        settings_from_env({}, base_dir=tmp_path)
    assert "SECRET_KEY is not set" in str(info.value) and "DEBUG=1" in str(info.value)
    assert settings_from_env({"SECRET_KEY": "s" * 50}, base_dir=tmp_path)["SECRET_KEY"] == "s" * 50
    with pytest.raises(ConfigError, match="environment variable DEBUG: expected true/false"):
        settings_from_env({"DEBUG": "maybe"}, base_dir=tmp_path)


def test_allowed_hosts_from_env_and_platform(tmp_path):
    assert settings_from_env({**BASE, "ALLOWED_HOSTS": "a.example, b.example"}, base_dir=tmp_path)[
        "ALLOWED_HOSTS"
    ] == ["a.example", "b.example"]
    hosts = settings_from_env({**BASE, "DYNO": "web.1", "HEROKU_APP_NAME": "chat"}, base_dir=tmp_path)["ALLOWED_HOSTS"]
    assert "chat.herokuapp.com" in hosts
    hosts = settings_from_env({**BASE, "RENDER": "true", "RENDER_EXTERNAL_HOSTNAME": "chat.onrender.com"},
                              base_dir=tmp_path)["ALLOWED_HOSTS"]
    assert "chat.onrender.com" in hosts


def test_proxy_ssl_header_only_behind_a_platform_proxy(tmp_path):
    assert "SECURE_PROXY_SSL_HEADER" not in settings_from_env(BASE, base_dir=tmp_path)
    for platform in ({"DYNO": "web.1"}, {"RENDER": "true"}, {"FLY_APP_NAME": "x"}, {"PAAS_CHANNELS_PROXY_HEADERS": "1"}):
        values = settings_from_env({**BASE, **platform}, base_dir=tmp_path)
        assert values["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


def test_configure_keeps_what_the_settings_file_set_when_the_environment_is_silent(tmp_path):
    namespace = {
        "BASE_DIR": tmp_path,
        "DEBUG": True,
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        "MIDDLEWARE": ["django.middleware.security.SecurityMiddleware", "django.middleware.common.CommonMiddleware"],
        "STORAGES": {"default": {"BACKEND": "myapp.storage.S3"}},
        "INSTALLED_APPS": ["django.contrib.auth"],
    }
    applied = configure(namespace, environ={})
    assert namespace["DEBUG"] is True
    assert namespace["DATABASES"]["default"]["NAME"] == ":memory:"
    assert "DATABASES" not in applied and "DEBUG" not in applied
    assert namespace["SECRET_KEY"].startswith("django-insecure")  # DEBUG from the file allows a dev key
    assert namespace["MIDDLEWARE"] == [
        "django.middleware.security.SecurityMiddleware",
        WHITENOISE_MIDDLEWARE,
        "django.middleware.common.CommonMiddleware",
    ]
    assert namespace["INSTALLED_APPS"] == ["django.contrib.auth", "paas_channels"]  # manage.py runworker
    assert namespace["TIME_ZONE"] == "UTC"
    assert namespace["STORAGES"]["default"] == {"BACKEND": "myapp.storage.S3"}
    assert namespace["STORAGES"]["staticfiles"]["BACKEND"].startswith("whitenoise.")
    sources = namespace["PAAS_CHANNELS_SETTINGS_SOURCES"]
    assert sources["DEBUG"] == "file" and sources["DATABASES"] == "file" and sources["CHANNEL_LAYERS"] == "default"
    # Called twice (or with WhiteNoise already listed): no second WhiteNoise, no second app.
    configure(namespace, environ={})
    assert namespace["MIDDLEWARE"].count(WHITENOISE_MIDDLEWARE) == 1
    assert namespace["INSTALLED_APPS"].count("paas_channels") == 1
    # The file's own SECRET_KEY satisfies the non-DEBUG requirement.
    configure(other := {"SECRET_KEY": "file-key", "BASE_DIR": tmp_path}, environ={})
    assert other["SECRET_KEY"] == "file-key" and other["DEBUG"] is False


def test_the_environment_wins_over_what_startproject_wrote(tmp_path):
    """DEBUG=0, DATABASE_URL, ALLOWED_HOSTS, SECRET_KEY, REDIS_URL replace the file's values; sources say so."""
    namespace = {
        "BASE_DIR": tmp_path, "DEBUG": True, "SECRET_KEY": "django-insecure-file", "ALLOWED_HOSTS": ["file.example"],
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}, "other": {}},
        "CHANNEL_LAYERS": {"default": {"BACKEND": "paas_channels.layers.RedisChannelLayer", "ROUTING": "p.routing.r",
                                       "CONFIG": {"hosts": ["redis://file:1/0"], "prefix": "mine"}}},
    }
    configure(namespace, environ={
        "DEBUG": "0", "SECRET_KEY": "e" * 50, "ALLOWED_HOSTS": "example.com",
        "DATABASE_URL": "postgres://u:p@db.example:5432/prod", "REDIS_URL": "redis://env:2/0",
    })
    assert namespace["DEBUG"] is False and namespace["SECRET_KEY"] == "e" * 50
    assert namespace["ALLOWED_HOSTS"] == ["example.com"]
    assert namespace["DATABASES"]["default"]["HOST"] == "db.example" and "other" in namespace["DATABASES"]
    layer = namespace["CHANNEL_LAYERS"]["default"]
    assert layer["CONFIG"]["hosts"] == ["redis://env:2/0"] and layer["CONFIG"]["prefix"] == "mine"
    assert layer["ROUTING"] == "p.routing.r"
    assert namespace["PAAS_CHANNELS_SETTINGS_SOURCES"] == {
        **namespace["PAAS_CHANNELS_SETTINGS_SOURCES"],
        "DEBUG": "env DEBUG", "SECRET_KEY": "env SECRET_KEY", "ALLOWED_HOSTS": "env ALLOWED_HOSTS",
        "DATABASES": "env DATABASE_URL", "CHANNEL_LAYERS": "env REDIS_URL",
    }
    line = describe_settings(SimpleNamespace(**namespace))
    assert "DEBUG=False(env DEBUG)" in line and "database=postgresql:db.example(env DATABASE_URL)" in line


def test_on_a_platform_debug_comes_only_from_the_environment_and_the_router_settings_are_on(tmp_path):
    namespace = {"BASE_DIR": tmp_path, "DEBUG": True, "SECRET_KEY": "s" * 50, "ALLOWED_HOSTS": []}
    configure(namespace, environ={"DYNO": "web.1", "HEROKU_APP_NAME": "chat"})
    assert namespace["DEBUG"] is False and namespace["PAAS_CHANNELS_SETTINGS_SOURCES"]["DEBUG"] == "platform"
    assert "chat.herokuapp.com" in namespace["ALLOWED_HOSTS"]  # the file's [] is Django's default, not a choice
    assert namespace["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert namespace["SECURE_SSL_REDIRECT"] and namespace["SESSION_COOKIE_SECURE"] and namespace["CSRF_COOKIE_SECURE"]
    assert namespace["SECURE_HSTS_SECONDS"] == 3600 and namespace["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    # A user turns HSTS down by assigning it before the call; DEBUG=1 on the platform drops them all.
    configure(turned := {"BASE_DIR": tmp_path, "SECRET_KEY": "s" * 50, "SECURE_HSTS_SECONDS": 0},
              environ={"DYNO": "web.1"})
    assert turned["SECURE_HSTS_SECONDS"] == 0 and "security.W021" not in turned.get("SILENCED_SYSTEM_CHECKS", [])
    configure(debug := {"BASE_DIR": tmp_path}, environ={"DYNO": "web.1", "DEBUG": "1"})
    assert debug["DEBUG"] is True and "SECURE_SSL_REDIRECT" not in debug


def test_describe_settings_masks_secrets():
    settings = SimpleNamespace(
        DEBUG=False, SECRET_KEY="very-secret", ALLOWED_HOSTS=["x.example"],
        CHANNEL_LAYERS={"default": {"BACKEND": "paas_channels.layers.RedisChannelLayer",
                                    "CONFIG": {"hosts": ["redis://:pa55word@r.example:6379/0"]}}},
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "HOST": "db.example", "PASSWORD": "dbpw"}},
        MIDDLEWARE=[WHITENOISE_MIDDLEWARE],
    )
    line = describe_settings(settings)
    assert "very-secret" not in line and "pa55word" not in line and "dbpw" not in line
    assert "RedisChannelLayer(redis://:***@r.example:6379/0)" in line
    assert "database=postgresql:db.example" in line and "whitenoise=on" in line
    assert mask_url("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def test_real_settings_module_in_a_fresh_process(tmp_path):
    """A settings file calling configure() loads in Django, logs to stdout, and a later assignment wins."""
    (tmp_path / "envproj").mkdir()
    (tmp_path / "envproj" / "__init__.py").write_text("")
    (tmp_path / "envproj" / "settings.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from paas_channels.conf import configure
        BASE_DIR = Path(__file__).resolve().parent.parent
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.staticfiles"]
        ROOT_URLCONF = "envproj.urls"
        configure(globals(), routing="envproj.routing.channel_routing")
        ALLOWED_HOSTS = ["set.after.configure"]
    """))
    (tmp_path / "envproj" / "urls.py").write_text("urlpatterns = []\n")
    script = textwrap.dedent("""
        import logging, django
        django.setup()
        from django.conf import settings
        logging.getLogger("envproj").info("hello from the project")
        print("LAYER", settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"])
        print("HOSTS", settings.ALLOWED_HOSTS)
        print("MIDDLEWARE", settings.MIDDLEWARE)
        print("DB", settings.DATABASES["default"]["NAME"])
    """)
    env = {
        "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}", "DJANGO_SETTINGS_MODULE": "envproj.settings",
        "SECRET_KEY": "x" * 50, "REDIS_URL": "redis://127.0.0.1:6379/0,redis://127.0.0.1:6380/0",
    }
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "LAYER ['redis://127.0.0.1:6379/0', 'redis://127.0.0.1:6380/0']" in result.stdout
    assert "HOSTS ['set.after.configure']" in result.stdout
    assert WHITENOISE_MIDDLEWARE in result.stdout
    assert f"DB {tmp_path / 'db.sqlite3'}" in result.stdout
    # The logging rule: log lines go to stderr, stdout is the program's own output.
    assert "INFO envproj" in result.stderr and "hello from the project" in result.stderr
    assert "hello from the project" not in result.stdout

    missing = {key: value for key, value in env.items() if key != "SECRET_KEY"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=missing, timeout=60)
    assert result.returncode != 0 and "SECRET_KEY is not set" in result.stderr
