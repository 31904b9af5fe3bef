"""Hosts without containers: the systemd units (systemd-analyze verify and its
offline security score), the Ansible playbook (ansible-playbook --syntax-check and
ansible-lint's production profile, offline) and the Terraform example
(terraform fmt -check; `init`/`validate` need the provider registry, not reachable
here — docs/deployment.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conveyor.lb.render import Endpoint, LbOptions, render_nginx
from tests.deploy.tools import DEPLOY, VENV_BIN, run, tool
from tests.harness import free_port

SYSTEMD = DEPLOY / "systemd"
ANSIBLE = DEPLOY / "ansible"
UNITS = {"conveyor-controller.service": 2.0, "conveyor-agent.service": 5.0}


def _units_runnable_here(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this environment's `conveyor` (verify
    checks that the program exists); everything else byte for byte."""
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text()
        (tmp_path / unit).write_text(
            text.replace("/opt/conveyor/venv/bin/conveyor", str(VENV_BIN / "conveyor"))
        )
    return tmp_path


def test_systemd_units_verify(tmp_path: Path) -> None:
    folder = _units_runnable_here(tmp_path)
    result = run(tool("systemd-analyze"), "verify", *(str(folder / u) for u in UNITS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a warning


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_units_are_hardened(tmp_path: Path, unit: str) -> None:
    folder = _units_runnable_here(tmp_path)
    result = run(tool("systemd-analyze"), "security", "--offline=yes", str(folder / unit))
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= UNITS[unit], result.stdout[-2000:]


def _env_keys(text: str) -> set[str]:
    return {
        line.split("=", 1)[0].strip()
        for line in text.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }


@pytest.mark.parametrize(
    ("unit", "example", "role"),
    [
        ("conveyor-controller.service", "controller.env", "conveyor_controller"),
        ("conveyor-agent.service", "agent.env", "conveyor_agent"),
    ],
)  # fmt: skip
def test_every_variable_a_unit_uses_is_set(unit: str, example: str, role: str) -> None:
    used = set(re.findall(r"\$\{(\w+)\}", (SYSTEMD / unit).read_text()))
    assert used
    example_keys = _env_keys((SYSTEMD / example).read_text())
    ansible_keys = _env_keys((ANSIBLE / "roles" / role / "templates" / f"{example}.j2").read_text())
    assert used <= example_keys
    assert example_keys == ansible_keys  # the playbook writes what the example shows


def _ansible_env(tmp_path: Path) -> dict[str, str]:
    # Everything Ansible and ansible-lint write goes to tmp_path, nothing to the repo
    # or the home folder; no Galaxy (network) access.
    return {
        **os.environ,
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }


def _run_in(folder: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    import subprocess

    result = subprocess.run(
        list(args), cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return result.returncode, result.stdout + result.stderr


def test_ansible_playbook_syntax(tmp_path: Path) -> None:
    code, output = _run_in(
        ANSIBLE, _ansible_env(tmp_path),
        tool("ansible-playbook"), "--syntax-check", "-i", "inventory.example.yml", "site.yml",
    )  # fmt: skip
    assert code == 0, output


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    # A copy: ansible-lint may leave a cache folder next to what it checks. The
    # playbook copies the units from ../systemd, so that comes along.
    copy = tmp_path / "deploy"
    shutil.copytree(ANSIBLE, copy / "ansible")
    shutil.copytree(SYSTEMD, copy / "systemd")
    code, output = _run_in(
        copy / "ansible", _ansible_env(tmp_path), tool("ansible-lint"), "--offline", "--nocolor"
    )
    assert code == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


def test_terraform_example_is_fmt_clean() -> None:
    terraform = tool("terraform")
    result = run(
        terraform, "fmt", "-check", "-diff", "-recursive", str(DEPLOY / "terraform"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (DEPLOY / "terraform" / "aws" / "main.tf").read_text().startswith("# EXAMPLE")


def test_ansible_lb_role_renders_and_checks_the_nginx_config(tmp_path: Path) -> None:
    """The load-balancer role's own tasks, run by ansible-playbook on this machine: the
    configuration comes from `conveyor lb-config` for the inventory's controllers and
    passes `nginx -t` (installing it and reloading nginx are left out: --tags)."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n  children:\n"
        "    conveyor_controllers:\n      hosts:\n        10.0.0.11: {}\n        10.0.0.12: {}\n"
        "    conveyor_lbs:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n"
        f"          ansible_python_interpreter: {VENV_BIN / 'python'}\n"
    )
    target = tmp_path / "nginx.conf"
    port = free_port()
    extra = {
        "conveyor_venv": str(VENV_BIN.parent),
        "conveyor_lb_config_path": str(target),
        "conveyor_lb_listen": f"127.0.0.1:{port}",
    }
    code, output = _run_in(
        ANSIBLE, _ansible_env(tmp_path),
        tool("ansible-playbook"), "-i", str(inventory), "site.yml",
        "--limit", "localhost", "--tags", "conveyor_lb_config", "-e", json.dumps(extra),
    )  # fmt: skip
    assert code == 0, output
    assert "Check the new configuration" in output
    rendered = (tmp_path / "nginx.conf.conveyor-new").read_text()
    expected = render_nginx(
        LbOptions(
            controllers=(Endpoint("10.0.0.11", 8080), Endpoint("10.0.0.12", 8080)),
            listen=Endpoint("127.0.0.1", port),
        )
    )
    assert rendered == expected
    assert not target.exists()  # installing is another tag
