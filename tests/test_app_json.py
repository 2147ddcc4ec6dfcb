"""app.json against Heroku's app.json schema, and against the Procfile and the settings.

The schema's rules are encoded here by hand from Heroku's published reference
(devcenter.heroku.com/articles/app-json-schema: keys and their types, env
entries, formation, add-ons, scripts, environments); no JSON-schema package is
needed for that.  ``schema_problems`` is itself checked against broken
manifests, so a rule that stopped working would show.  The scripts app.json
names are run for real, in the order Heroku runs them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import django
import pytest

from paas_channels.conf import settings_from_env

from .support import ROOT, RedisServer

APP_JSON = ROOT / "app.json"

### Heroku's app.json schema, as rules ###

_URL = re.compile(r"^(https?|git|ssh)://\S+$")
_TOP_LEVEL = {
    "name": str, "description": str, "keywords": list, "website": str, "repository": str, "logo": str,
    "success_url": str, "scripts": dict, "env": dict, "formation": dict, "image": str, "addons": list,
    "buildpacks": list, "environments": dict, "stack": str,
}
_SCRIPTS = {"postdeploy", "pr-predestroy"}
_ENV_FIELDS = {"description": str, "value": str, "required": bool, "generator": str}
_DYNO_SIZES = {"eco", "basic", "standard-1x", "standard-2x", "performance-m", "performance-l",
               "performance-l-ram", "performance-xl", "performance-2xl", "private-s", "private-m", "private-l",
               "shield-s", "shield-m", "shield-l"}
#: environments.<name> overrides these keys only; Heroku CI ("test") adds test-setup/test scripts.
_ENVIRONMENTS = {"test": {"addons", "buildpacks", "env", "formation", "scripts", "stack", "image"},
                 "review": {"addons", "buildpacks", "env", "formation", "scripts", "stack", "image"}}
_TEST_SCRIPTS = {"test-setup", "test"}


def _env_problems(env, where: str) -> list[str]:
    problems = []
    for key, entry in env.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            problems.append(f"{where}.{key}: config var names are upper case letters, digits and _")
        if isinstance(entry, str):
            continue  # a plain string is the value
        if not isinstance(entry, dict):
            problems.append(f"{where}.{key}: expected a string or an object; got {type(entry).__name__}")
            continue
        for field, value in entry.items():
            if field not in _ENV_FIELDS:
                problems.append(f"{where}.{key}.{field}: unknown field (known: {', '.join(sorted(_ENV_FIELDS))})")
            elif not isinstance(value, _ENV_FIELDS[field]):
                problems.append(f"{where}.{key}.{field}: expected {_ENV_FIELDS[field].__name__}; "
                                f"got {type(value).__name__}")
        if "generator" in entry and entry["generator"] != "secret":
            problems.append(f"{where}.{key}.generator: the only generator is 'secret'; got {entry['generator']!r}")
        if "generator" in entry and "value" in entry:
            problems.append(f"{where}.{key}: 'value' and 'generator' exclude each other")
        if entry.get("required", True) and "value" not in entry and "generator" not in entry \
                and where == "env":
            # Allowed (the deploy form asks for it), but then it must say what to enter.
            if not entry.get("description"):
                problems.append(f"{where}.{key}: required with no value or generator, and no description to "
                                "tell the user what to enter")
    return problems


def _formation_problems(formation, where: str) -> list[str]:
    problems = []
    for name, spec in formation.items():
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", name):
            problems.append(f"{where}.{name}: process type names are letters, digits, _ and -")
        if not isinstance(spec, dict):
            problems.append(f"{where}.{name}: expected an object with quantity and size")
            continue
        for field in spec:
            if field not in {"quantity", "size"}:
                problems.append(f"{where}.{name}.{field}: unknown field (known: quantity, size)")
        quantity = spec.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            problems.append(f"{where}.{name}.quantity: expected a whole number >= 0; got {quantity!r}")
        if "size" in spec and str(spec["size"]).lower() not in _DYNO_SIZES:
            problems.append(f"{where}.{name}.size: {spec['size']!r} is not a dyno size "
                            f"({', '.join(sorted(_DYNO_SIZES))})")
    return problems


def _addon_problems(addons, where: str) -> list[str]:
    problems = []
    for index, addon in enumerate(addons):
        if isinstance(addon, str):
            addon = {"plan": addon}
        if not isinstance(addon, dict):
            problems.append(f"{where}[{index}]: expected 'service:plan' or an object with 'plan'")
            continue
        if not isinstance(addon.get("plan"), str) or not re.fullmatch(r"[a-z0-9-]+(:[a-z0-9-]+)?", addon["plan"]):
            problems.append(f"{where}[{index}].plan: expected 'service' or 'service:plan'; got {addon.get('plan')!r}")
        for field in addon:
            if field not in {"plan", "as", "options"}:
                problems.append(f"{where}[{index}].{field}: unknown field (known: plan, as, options)")
        if "as" in addon and not re.fullmatch(r"[A-Z][A-Z0-9_]*", str(addon["as"])):
            problems.append(f"{where}[{index}].as: attachment names are upper case (they prefix _URL)")
        if "options" in addon and not isinstance(addon["options"], dict):
            problems.append(f"{where}[{index}].options: expected an object")
    return problems


def _scripts_problems(scripts, where: str, known: set[str]) -> list[str]:
    problems = []
    for name, command in scripts.items():
        if name not in known:
            problems.append(f"{where}.{name}: unknown script (known: {', '.join(sorted(known))})")
        if not isinstance(command, str) or not command.strip():
            problems.append(f"{where}.{name}: expected a shell command")
    return problems


def schema_problems(app) -> list[str]:
    """What in ``app`` breaks Heroku's app.json schema, one line each."""
    if not isinstance(app, dict):
        return [f"app.json: expected an object; got {type(app).__name__}"]
    problems = []
    for key, value in app.items():
        if key not in _TOP_LEVEL:
            problems.append(f"{key}: not an app.json key (known: {', '.join(sorted(_TOP_LEVEL))})")
        elif not isinstance(value, _TOP_LEVEL[key]):
            problems.append(f"{key}: expected {_TOP_LEVEL[key].__name__}; got {type(value).__name__}")
    if isinstance(app.get("name"), str) and not 3 <= len(app["name"]) <= 30:
        problems.append(f"name: 3 to 30 characters; got {len(app['name'])}")
    if isinstance(app.get("description"), str) and len(app["description"]) > 140:
        problems.append(f"description: at most 140 characters; got {len(app['description'])}")
    if isinstance(app.get("keywords"), list) and not all(isinstance(k, str) for k in app["keywords"]):
        problems.append("keywords: expected an array of strings")
    for key in ("website", "repository", "logo"):
        if isinstance(app.get(key), str) and not _URL.match(app[key]):
            problems.append(f"{key}: expected a URL; got {app[key]!r}")
    if isinstance(app.get("success_url"), str) and not (app["success_url"].startswith("/") or _URL.match(app["success_url"])):
        problems.append("success_url: a path starting with / or a full URL")
    if isinstance(app.get("scripts"), dict):
        problems += _scripts_problems(app["scripts"], "scripts", _SCRIPTS)
    if isinstance(app.get("env"), dict):
        problems += _env_problems(app["env"], "env")
    if isinstance(app.get("formation"), dict):
        problems += _formation_problems(app["formation"], "formation")
    if isinstance(app.get("addons"), list):
        problems += _addon_problems(app["addons"], "addons")
    if isinstance(app.get("buildpacks"), list):
        for index, buildpack in enumerate(app["buildpacks"]):
            if not isinstance(buildpack, dict) or not isinstance(buildpack.get("url"), str) or set(buildpack) != {"url"}:
                problems.append(f"buildpacks[{index}]: expected {{\"url\": \"...\"}}")
    for name, overrides in (app.get("environments") or {}).items() if isinstance(app.get("environments"), dict) else ():
        where = f"environments.{name}"
        if name not in _ENVIRONMENTS or not isinstance(overrides, dict):
            problems.append(f"{where}: environments are {', '.join(sorted(_ENVIRONMENTS))}, each an object")
            continue
        for key in overrides:
            if key not in _ENVIRONMENTS[name]:
                problems.append(f"{where}.{key}: not a key {name} may override")
        known = _SCRIPTS | (_TEST_SCRIPTS if name == "test" else set())
        if isinstance(overrides.get("scripts"), dict):
            problems += _scripts_problems(overrides["scripts"], f"{where}.scripts", known)
        if isinstance(overrides.get("env"), dict):
            problems += _env_problems(overrides["env"], f"{where}.env")
        if isinstance(overrides.get("addons"), list):
            problems += _addon_problems(overrides["addons"], f"{where}.addons")
        if isinstance(overrides.get("formation"), dict):
            problems += _formation_problems(overrides["formation"], f"{where}.formation")
    return problems


### Helpers ###


def _app() -> dict:
    return json.loads(APP_JSON.read_text())


def _procfile() -> dict[str, str]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            processes[match.group(1)] = match.group(2)
    return processes


#: Default attachment names (the config var is <name>_URL) of the add-on services we use.
_DEFAULT_ATTACHMENT = {"heroku-redis": "REDIS", "heroku-postgresql": "DATABASE"}


def _config_vars_of_addons(addons) -> set[str]:
    names = set()
    for addon in addons:
        addon = {"plan": addon} if isinstance(addon, str) else addon
        service = addon["plan"].split(":")[0]
        names.add(f"{addon.get('as') or _DEFAULT_ATTACHMENT.get(service, service.upper())}_URL")
    return names


def _read_by_the_project() -> str:
    """The source that reads the environment: paas_channels and the example settings."""
    sources = [path.read_text() for path in (ROOT / "paas_channels").rglob("*.py")]
    sources.append((ROOT / "example_project" / "settings.py").read_text())
    return "\n".join(sources)


### Tests ###


def test_app_json_follows_herokus_schema():
    app = _app()
    assert schema_problems(app) == []
    # What the one-click deploy needs beyond the schema's minimum.
    for key in ("name", "description", "repository", "keywords", "env", "formation", "addons", "scripts",
                "environments"):
        assert key in app, f"app.json has no {key!r}"
    assert app["env"]["SECRET_KEY"] == {**app["env"]["SECRET_KEY"], "generator": "secret"}
    assert app["environments"]["test"]["scripts"]["test"]


@pytest.mark.parametrize("change, expected", [
    (lambda app: app.update(nmae="typo"), "nmae: not an app.json key"),
    (lambda app: app.update(keywords="django"), "keywords: expected list"),
    (lambda app: app.update(name="x" * 31), "name: 3 to 30 characters"),
    (lambda app: app.update(description="d" * 141), "description: at most 140"),
    (lambda app: app.update(repository="github.com/x/y"), "repository: expected a URL"),
    (lambda app: app["env"]["SECRET_KEY"].update(generator="random"), "the only generator is 'secret'"),
    (lambda app: app["env"].update(secret_key="x"), "env.secret_key: config var names are upper case"),
    (lambda app: app["env"]["PAAS_CHANNELS_THREADS"].update(value=4), "env.PAAS_CHANNELS_THREADS.value: expected str"),
    (lambda app: app["env"].update(MISSING={}), "env.MISSING: required with no value"),
    (lambda app: app["formation"]["web"].update(quantity="1"), "formation.web.quantity: expected a whole number"),
    (lambda app: app["formation"]["web"].update(size="huge"), "formation.web.size: 'huge' is not a dyno size"),
    (lambda app: app["addons"].append({"plan": "Heroku Redis"}), "plan: expected 'service' or 'service:plan'"),
    (lambda app: app["scripts"].update(predeploy="x"), "scripts.predeploy: unknown script"),
    (lambda app: app["environments"].update(staging={}), "environments.staging"),
    (lambda app: app["environments"]["test"]["scripts"].update(test=""), "environments.test.scripts.test: expected"),
])
def test_the_schema_rules_catch_broken_manifests(change, expected):
    app = copy.deepcopy(_app())
    change(app)
    problems = schema_problems(app)
    assert any(expected in problem for problem in problems), problems


def test_app_json_matches_the_procfile_and_the_settings():
    app, procfile = _app(), _procfile()
    # Every process type but the release phase is a dyno formation; nothing else is.
    assert "release" in procfile and "migrate" in procfile["release"]
    assert set(app["formation"]) == set(procfile) - {"release"}
    assert all(spec["quantity"] >= 1 for spec in app["formation"].values())

    # The add-ons set exactly the variables paas_channels.conf reads for the layer and the database...
    assert {"REDIS_URL", "DATABASE_URL"} <= _config_vars_of_addons(app["addons"])
    test_vars = _config_vars_of_addons(app["environments"]["test"]["addons"])
    assert {"REDIS_URL", "DATABASE_URL"} <= test_vars
    # ...and reading them gives the split-mode settings the Procfile needs.
    settings = settings_from_env({"REDIS_URL": "redis://h:6379", "DATABASE_URL": "postgres://u:p@h:5432/d",
                                  "SECRET_KEY": "s"}, base_dir=ROOT, routing="example_project.routing.channel_routing")
    assert settings["CHANNEL_LAYERS"]["default"]["BACKEND"] == "paas_channels.layers.RedisChannelLayer"
    assert settings["DATABASES"]["default"]["ENGINE"] == "django.db.backends.postgresql"

    # Every config var app.json sets is read by someone: paas_channels, the settings, or the
    # Django command a script of app.json runs.
    source = _read_by_the_project()
    createsuperuser = (Path(django.__file__).parent / "contrib/auth/management/commands/createsuperuser.py").read_text()
    scripts = " ".join([*app["scripts"].values(), *app["environments"]["test"]["scripts"].values()])
    for where, env in [("env", app["env"]), ("environments.test.env", app["environments"]["test"]["env"])]:
        for key in env:
            known = f'"{key}"' in source or (key.startswith("DJANGO_SUPERUSER_") and "createsuperuser" in scripts
                                               and ("DJANGO_SUPERUSER_" in createsuperuser))
            assert known, f"app.json {where}.{key} is read by nothing in paas_channels or the example settings"


def test_runtime_files_name_the_python_the_tests_run_on():
    runtime = (ROOT / "runtime.txt").read_text().strip()
    python_version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+\.\d+", runtime) and re.fullmatch(r"3\.\d+", python_version)
    assert runtime.removeprefix("python-").rsplit(".", 1)[0] == python_version
    tested = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python_version == tested, (
        f".python-version deploys Python {python_version} but the tests run on {tested}: test what you deploy")


@pytest.mark.redis
def test_app_json_scripts_run(tmp_path):
    """release (Procfile), then postdeploy, as Heroku runs them on a new app; then Heroku CI's scripts."""
    app = _app()
    redis = RedisServer().start()
    try:
        env = {key: value for key, value in os.environ.items()
               if key not in {"DJANGO_SETTINGS_MODULE", "REDIS_URL", "DATABASE_URL", "SECRET_KEY", "DEBUG"}
               and not key.startswith(("PAAS_CHANNELS_", "DJANGO_SUPERUSER_"))}
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(REDIS_URL=redis.url, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
        for key, entry in app["env"].items():  # what Heroku sets from app.json
            entry = {"value": entry} if isinstance(entry, str) else entry
            if entry.get("generator") == "secret":
                env[key] = secrets.token_urlsafe(48)
            elif "value" in entry:
                env[key] = entry["value"]

        def run(command: str, extra: dict | None = None) -> str:
            result = subprocess.run(shlex.split(command), cwd=ROOT, env={**env, **(extra or {})},
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{command!r} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            return result.stdout + result.stderr

        run(_procfile()["release"])
        run(app["scripts"]["postdeploy"])
        check = ("from django.contrib.auth import get_user_model; import os; "
                 "u = get_user_model().objects.get(username=os.environ['DJANGO_SUPERUSER_USERNAME']); "
                 "assert u.is_superuser and u.check_password(os.environ['DJANGO_SUPERUSER_PASSWORD'])")
        run(f"python manage.py shell -c {shlex.quote(check)}")

        test_env = app["environments"]["test"]
        ci = {key: entry if isinstance(entry, str) else entry.get("value", "") for key, entry in test_env["env"].items()}
        ci["DATABASE_URL"] = f"sqlite:///{tmp_path / 'ci.sqlite3'}"
        run(test_env["scripts"]["test-setup"], ci)
        assert "no problems" in run(test_env["scripts"]["test"], ci)
    finally:
        redis.close()
