"""The two README commands, the packaging and environment.yml stay in step; a built wheel stands alone."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, SAMPLE


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


def fake_ci(tmp_path, failing: str = ""):
    """.ci/run in a copy of the checkout's shape, with `make` (and apt-get) replaced by stubs that log
    their arguments; `make <failing>` fails."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("make", "apt-get"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n'
                                    f'[ "$1" = "{failing or "-"}" ] && exit 1\nexit 0\n')
        (bin_dir / tool).chmod(0o755)
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=tmp_path)
    calls = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("make ")]
    return out, calls


def test_ci_runs_both_readme_commands_in_order_then_lint(tmp_path):
    out, calls = fake_ci(tmp_path)
    assert out.returncode == 0, out.stderr
    assert calls == ["demo", "test", "lint"]


def test_ci_fails_when_lint_fails(tmp_path):
    out, calls = fake_ci(tmp_path, failing="lint")
    assert out.returncode != 0 and calls == ["demo", "test", "lint"]


def test_lint_tools_come_with_the_test_extra_and_make_lint_runs_them():
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert {re.split(r"[=<>~!]", d)[0] for d in test_extra} >= {"ruff", "mypy"}
    lint = re.search(r"^lint: .*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert lint and "ruff check" in lint.group(1) and "mypy" in lint.group(1)


def test_ci_fails_when_the_first_readme_command_fails(tmp_path):
    out, calls = fake_ci(tmp_path, failing="demo")
    assert out.returncode != 0 and calls == ["demo"]


@pytest.mark.slow
def test_wheel_ships_the_notebooks_and_the_sample(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    notebooks = {f"toolkit/notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    sample = {f"toolkit/sample/{p.relative_to(SAMPLE)}" for p in SAMPLE.rglob("*") if p.is_file()}
    assert "toolkit/notebooks/sync.ipynb" in notebooks and "toolkit/sample/cohorts.yaml" in sample
    assert notebooks <= names and sample <= names


# -- a wheel in a fresh virtual environment, outside the checkout ---------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of what the package is made of (the checkout stays clean)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("toolkit", "notebooks", "data/sample"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return next(out.glob("toolkit-*.whl"))


def outside(tmp_path) -> dict:
    """An environment that cannot see the checkout: no PYTHONPATH, no active venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TOOLKIT_DB")}
    return {**env, "HOME": os.environ.get("HOME", str(tmp_path))}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_wheel_works_in_a_fresh_venv_with_base_then_notebook_dependencies(wheel, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = outside(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, toolkit = venv / "bin" / "python", str(venv / "bin" / "toolkit")

    def run(*args, **kw):
        return subprocess.run([*map(str, args)], capture_output=True, text=True, env=env, cwd=work, **kw)

    installed = run(py, "-m", "pip", "install", "--quiet", str(wheel))
    assert installed.returncode == 0, installed.stderr
    where = run(py, "-c", "import json, toolkit, toolkit.resources as r; "
                          "print(json.dumps([toolkit.__file__, str(r.NOTEBOOKS), str(r.SAMPLE)]))")
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(venv)) for path in json.loads(where.stdout))

    for args in (["--help"], ["emulator", "--help"]):
        out = run(toolkit, *args)
        assert out.returncode == 0 and "usage: toolkit" in out.stdout, out.stderr
    out = run(toolkit, "load", SAMPLE / "profiles.json", "--db", work / "base.duckdb", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["profiles"] > 0
    # What needs the notebooks extra says so, instead of a traceback.
    out = run(toolkit, "sync", "--db", work / "base.duckdb", "--runs-dir", work / "runs")
    assert out.returncode == 1 and "pip install 'toolkit[notebooks]'" in out.stderr
    assert "Traceback" not in out.stderr

    installed = run(py, "-m", "pip", "install", "--quiet", f"{wheel}[notebooks]")
    assert installed.returncode == 0, installed.stderr
    out = run(toolkit, "demo", "--workdir", work / "var", timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sync notebook ran" in out.stdout and (work / "var" / "demo.duckdb").exists()
    assert "next steps" in out.stdout


def test_console_script_points_at_main():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["toolkit"] == "toolkit.cli:main"


def test_every_package_is_in_the_wheels_package_list():
    """The wheel lists its packages explicitly (package data needs it): a new subpackage left out of the list
    installs without its code (`toolkit generate` and `toolkit load` each broke that way once)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for init in (root / "toolkit").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
