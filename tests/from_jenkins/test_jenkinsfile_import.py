"""`conveyor import jenkinsfile`: the declarative subset translates into a valid
pipeline; everything else is reported with its line, never guessed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conveyor.core.jenkinsfile import GroovySyntaxError, dump_yaml, translate_jenkinsfile
from conveyor.core.pipeline import parse_pipeline

FIXTURES = Path(__file__).parent / "fixtures"


def _translate(name: str) -> tuple[dict, list[tuple[int, str]], str]:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    translation = translate_jenkinsfile(text, "imported")
    output = dump_yaml(translation, source=name)
    parse_pipeline(output)  # the output always loads as a valid pipeline
    return yaml.safe_load(output), [(i.line, i.message) for i in translation.issues], output


def test_seed_ops_pipeline_translates_all_but_its_script_blocks() -> None:
    spec, issues, output = _translate("ops.Jenkinsfile")
    # Exactly the four script {} blocks are reported, with their lines.
    assert [line for line, _ in issues] == [21, 34, 55, 70]
    assert all("script { }" in message for _, message in issues)
    assert "lines 34-49" in issues[1][1]
    assert spec["parameters"] == [
        {
            "name": "OPERATION",
            "type": "choice",
            "choices": ["deploy", "update", "scale", "backup"],
            "description": "选择运维操作",
        },
        {"name": "TARGET_ENV", "default": "staging", "description": "目标环境"},
    ]
    assert [s["name"] for s in spec["stages"]] == ["Pre-check", "Execute Operation", "Verify"]
    # Each untranslated block stands as a step that fails loudly, naming the line.
    first = spec["stages"][0]["steps"][0]["sh"]
    assert "ops.Jenkinsfile" not in first and "Jenkinsfile:21" in first and "exit 1" in first
    assert "Jenkinsfile:70" in spec["post"]["always"][0]["sh"]
    assert "ops.Jenkinsfile:34: `script { }` block" in output  # header comment


def test_every_supported_construct_translates() -> None:
    spec, issues, _ = _translate("full.Jenkinsfile")
    assert spec["agent"] == "linux && docker"
    assert (spec["timeout"], spec["retry"], spec["concurrency"]) == ("1h", 2, 1)
    assert spec["triggers"] == {"cron": "H 3 * * 1-5", "poll": "5m"}
    assert [p["name"] for p in spec["parameters"]] == ["TARGET", "MODE", "DRY_RUN", "NOTES"]
    assert spec["parameters"][2] == {
        "name": "DRY_RUN",
        "type": "boolean",
        "default": "true",
        "description": "Only pretend",
    }
    assert spec["environment"] == {"SERVICE": "demo"}
    assert spec["credentials"] == [{"id": "team-a/token", "env": "API_TOKEN"}]

    build = spec["stages"][0]
    assert build["timeout"] == "10m"
    steps = build["steps"]
    assert steps[0] == {"echo": "building"}
    assert steps[1] == {"sh": "make build"}
    assert steps[2]["sh"] == 'echo "target ${TARGET} in ${SERVICE}"\nmake package\n'
    assert steps[3] == {"sh": "cd sub\nmake sub"}
    assert steps[4] == {"archive": ["sub/out/*.tar.gz", "sub/logs/*.log"]}
    assert steps[5] == {"sh": "export MODE2=quick\nexport LEVEL=3\necho $MODE2 $LEVEL"}
    assert steps[6] == {"sh": "./flaky.sh", "timeout": "90s"}
    assert steps[7] == {"sh": "./upload.sh", "retry": 3}
    assert steps[8:] == [{"sh": "sleep 5"}, {"sh": "sleep 120"}]

    unit, lint = spec["stages"][1]["parallel"]
    assert unit == {"name": "unit", "steps": [{"sh": "make unit"}]}
    assert lint["when"] == {
        "all": [
            {"parameter": "MODE", "equals": "full"},
            {"not": {"parameter": "DRY_RUN", "equals": "true"}},
        ]
    }
    deploy = spec["stages"][2]
    assert deploy["when"] == {
        "any": [
            {"parameter": "TARGET", "equals": "production"},
            {"parameter": "MODE", "in": ["fast", "full"]},
        ]
    }
    assert deploy["steps"][0]["credentials"] == [
        {"id": "team-a/deploy", "env": "DEPLOY_TOKEN"},
        {"id": "team-a/registry", "username_env": "REG_USER", "password_env": "REG_PASS"},
    ]
    assert deploy["steps"][1] == {"sh": 'echo "deployed to ${TARGET}"'}
    assert spec["stages"][3]["steps"] == [{"sh": "echo refusing >&2\nexit 1"}]
    assert spec["post"] == {
        "success": [{"echo": "ok"}],
        "failure": [{"sh": "echo failed >&2"}],
        "cancelled": [{"echo": "cancelled"}],
        "always": [{"archive": ["report.txt"]}],
    }
    assert [line for line, _ in issues] == [8, 12, 80, 91]
    assert "timestamps" in issues[0][1]
    assert "scm:" in issues[1][1]
    assert "when branch" in issues[2][1] and "now always runs" in issues[2][1]
    assert "unstable" in issues[3][1]


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("steps { sh(script: 'ls', returnStdout: true) }", 3, "returnStdout"),
        ("steps { def x = 1 }", 3, "def x = 1"),
        ("steps { input 'ok?' }", 3, "step `input`"),
        ('steps { sh "echo ${currentBuild.number + 1}" }', 3, "Groovy expression"),
        ("when { expression { env.BRANCH_NAME ==~ /rel/ } }\n steps { sh 'x' }", 3, "when"),
        ("agent { docker 'node:20' }\n steps { sh 'x' }", 3, "agent"),
    ],
)
def test_untranslatable_constructs_are_reported_with_their_line(
    body: str, line: int, fragment: str
) -> None:
    text = f"pipeline {{\n  stages {{\n    stage('s') {{ {body} }}\n  }}\n}}\n"
    translation = translate_jenkinsfile(text, "job")
    parse_pipeline(dump_yaml(translation))
    assert [i.line for i in translation.issues] == [line]
    assert fragment in translation.issues[0].message


def test_text_that_is_not_a_declarative_pipeline_is_an_error_with_a_line() -> None:
    with pytest.raises(GroovySyntaxError) as exc:
        translate_jenkinsfile("pipeline {\n  stages {\n", "job")
    assert exc.value.line == 3
    with pytest.raises(GroovySyntaxError):
        translate_jenkinsfile("node { sh 'make' }\n", "job")  # scripted, not declarative


def _absolute_pythonpath() -> str:
    # The child runs in another folder: a relative PYTHONPATH (src) must stay ours.
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.pathsep.join(os.path.abspath(e) for e in entries if e)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "import", "jenkinsfile", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": _absolute_pythonpath()},
        timeout=60,
    )


def test_cli_writes_the_pipeline_to_stdout_and_the_report_to_stderr(tmp_path: Path) -> None:
    folder = tmp_path / "ops pipeline"
    folder.mkdir()
    (folder / "Jenkinsfile").write_text((FIXTURES / "ops.Jenkinsfile").read_text("utf-8"))
    result = _cli("Jenkinsfile", cwd=folder)
    assert result.returncode == 0, result.stderr
    pipeline = parse_pipeline(result.stdout)
    assert pipeline.name == "ops-pipeline"  # from the folder's name
    report = result.stderr.splitlines()
    assert report[:4] == [
        f"Jenkinsfile:{n}: not translated: `script {{ }}` block (lines {n}-{end}) "
        "is arbitrary Groovy"
        for n, end in [(21, 28), (34, 49), (55, 62), (70, 83)]
    ]
    strict = _cli("Jenkinsfile", "--strict", "--name", "team/ops", cwd=folder)
    assert strict.returncode == 3
    assert parse_pipeline(strict.stdout).name == "team/ops"

    (folder / "Broken").write_text("pipeline {\n  stages {\n")
    broken = _cli("Broken", cwd=folder)
    assert broken.returncode != 0 and "Broken:3: missing '}'" in broken.stderr
    assert "Traceback" not in broken.stderr and broken.stdout == ""
