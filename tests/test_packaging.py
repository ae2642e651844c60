"""The two README commands, the packaging and environment.yml stay in step."""

import re
import tomllib

import yaml

from conftest import ROOT


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    assert python.removeprefix("python") == project["requires-python"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    extras = set(re.search(r"\[(.*)\]", pip[0]).group(1).split(","))
    assert pip[0].startswith("-e .") and extras == set(project["optional-dependencies"])


def test_readme_first_screen_gives_the_two_make_targets():
    readme = (ROOT / "README.md").read_text().splitlines()[:15]
    commands = [line.split("#")[0].strip() for line in readme if line.startswith("make ")]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_console_script_points_at_main():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["toolkit"] == "toolkit.cli:main"
