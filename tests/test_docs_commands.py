"""Every `stdiff` command of the README and the guide parses as written: its configuration is
checked (classes, keys, types) and resolved by jsonargparse (``--print_config``), from the
repository root. Running them is the job of the tests of each feature and of the slow tests; a
removed or renamed option fails here at once."""

import re

import pytest
from conftest import ROOT

from stdiff.cli import ROOTS, main
from stdiff.config_check import check_config
from stdiff.config_files import config_relative_paths, packaged_configs

PAGES = [ROOT / "README.md", *sorted((ROOT / "stdiff" / "guide").glob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    command = re.sub(r"^(\w+=\S+ )+", "", part.split(" #")[0].strip())  # OMP_NUM_THREADS=1 …
                    if command.startswith("stdiff ") and "..." not in command and "…" not in command:
                        found.append((page.name, command))
    return found


COMMANDS = documented_commands()


def test_the_pages_hold_the_commands_this_test_checks():
    assert len(COMMANDS) >= 20 and any("GeneralizedCauchy" in c for _, c in COMMANDS)


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_a_documented_command_parses_as_written(page, command, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    args = [a.replace("<file>", "last") for a in command.split()[1:] if a != "--print_config"]
    check_config(config_relative_paths(packaged_configs(args)), ROOTS)
    with pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert "trainer:" in capsys.readouterr().out
