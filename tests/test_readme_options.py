"""README documents every option the CLI takes, with its environment variable (they are declared once, in OPTIONS)."""

from __future__ import annotations

from pathlib import Path

from paas_channels.config.options import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_option_and_its_variable_is_in_the_readme_options_table():
    rows = [line for line in README.splitlines() if line.startswith("| `-")]
    # The first cell names the flags: `--bind`, `-b/--bind`, `--ws-protocol` (repeatable).
    by_flag = {}
    for row in rows:
        cell = row.split("|")[1].split("`")[1]
        for name in cell.split("/"):
            by_flag.setdefault(name, row)
    missing = []
    for option in OPTIONS:
        flag = next(flag for flag in option.flags if flag.startswith("--"))
        row = by_flag.get(flag)
        if row is None or (option.env and f"`{option.env}`" not in row):
            missing.append(f"{flag} ({option.env or 'no variable'})")
    assert missing == [], f"README's options table lacks: {', '.join(missing)}"
