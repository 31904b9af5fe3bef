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


def _pipeline(text: str) -> tuple[dict, list[tuple[int, str]]]:
    translation = translate_jenkinsfile(text, "job")
    parse_pipeline(dump_yaml(translation))  # always a valid pipeline
    return translation.pipeline, [(i.line, i.message) for i in translation.issues]


def test_stage_agents_that_agree_become_the_builds_agent() -> None:
    spec, issues = _pipeline(
        """\
pipeline {
  agent none
  stages {
    stage('build') {
      agent { label 'linux && docker' }
      steps { sh 'make' }
    }
    stage('test') {
      agent any
      steps { sh 'make test' }
    }
    stage('both') {
      parallel {
        stage('a') { agent { label 'linux && docker' }
                     steps { sh 'a' } }
        stage('b') { agent none
                     steps { sh 'b' } }
      }
    }
  }
}
"""
    )
    assert issues == []
    assert spec["agent"] == "linux && docker"
    assert spec["stages"][0] == {"name": "build", "steps": [{"sh": "make"}]}


def test_stage_agents_that_differ_are_reported_with_their_lines() -> None:
    spec, issues = _pipeline(
        """\
pipeline {
  agent { label 'linux' }
  stages {
    stage('build') {
      agent { label 'linux' }
      steps { sh 'make' }
    }
    stage('win') {
      agent { label 'windows' }
      steps { sh 'build.bat' }
    }
    stage('box') {
      agent { docker 'node:20' }
      steps { sh 'npm test' }
    }
  }
}
"""
    )
    assert spec["agent"] == "linux"
    assert [line for line, _ in issues] == [9, 13]
    assert "'windows'" in issues[0][1] and "the build's agent (linux)" in issues[0][1]
    assert "stage 'box'" in issues[1][1] and "agent" in issues[1][1]


def test_stage_post_moves_to_the_pipeline_post_and_says_when_it_is_not_exact() -> None:
    spec, issues = _pipeline(
        """\
pipeline {
  agent any
  stages {
    stage('build') {
      steps { sh 'make' }
      post {
        always { archiveArtifacts artifacts: 'build.log' }
      }
    }
    stage('test') {
      steps { sh 'make test' }
      post {
        success { echo 'tests passed' }
        failure { echo 'tests failed' }
        unstable { echo 'flaky' }
      }
    }
  }
  post {
    always { echo 'done' }
    success { echo 'all good' }
  }
}
"""
    )
    assert "post" not in spec["stages"][0] and "post" not in spec["stages"][1]
    assert spec["post"] == {
        "always": [{"archive": ["build.log"]}, {"echo": "done"}],
        "success": [{"echo": "tests passed"}, {"echo": "all good"}],
        "failure": [{"echo": "tests failed"}],
    }
    # success of the last stage is exact; the others are moved and reported.
    assert [line for line, _ in issues] == [6, 12, 15]
    assert "stage 'build': post always" in issues[0][1] and "whole pipeline" in issues[0][1]
    assert "stage 'test': post failure" in issues[1][1]
    assert "`unstable`" in issues[2][1]


def test_the_only_stages_post_is_exact() -> None:
    spec, issues = _pipeline(
        "pipeline {\n agent any\n stages {\n  stage('s') {\n   steps { sh 'x' }\n"
        "   post {\n    always { echo 'bye' }\n    failure { echo 'no' }\n   }\n  }\n }\n}\n"
    )
    assert issues == []
    assert spec["post"] == {"always": [{"echo": "bye"}], "failure": [{"echo": "no"}]}


def test_nested_sequential_stages_become_stages_inheriting_the_outer_one() -> None:
    spec, issues = _pipeline(
        """\
pipeline {
  agent any
  parameters { booleanParam(name: 'DEPLOY', defaultValue: false) }
  stages {
    stage('Prepare') { steps { sh 'prep' } }
    stage('Release') {
      when { expression { params.DEPLOY } }
      environment { STAGE = 'release' }
      options { timeout(time: 5, unit: 'MINUTES') }
      stages {
        stage('Package') {
          environment { FORMAT = 'tar' }
          steps { sh 'make package' }
        }
        stage('Publish') {
          when { expression { params.DEPLOY == true } }
          steps { sh 'make publish' }
        }
      }
      post { success { echo 'released' } }
    }
    stage('Checks') {
      parallel {
        stage('lint') {
          stages {
            stage('style') { steps { sh 'make style' } }
            stage('types') { agent any
                             steps { sh 'make types' } }
          }
        }
        stage('unit') {
          stages {
            stage('u') {
              environment { X = '1' }
              steps { sh 'make unit' }
            }
          }
        }
      }
    }
  }
}
"""
    )
    names = [s["name"] for s in spec["stages"]]
    assert names == ["Prepare", "Release » Package", "Release » Publish", "Checks"]
    package, publish = spec["stages"][1:3]
    deploy = {"parameter": "DEPLOY", "equals": "true"}
    assert package == {
        "name": "Release » Package",
        "when": deploy,
        "timeout": "5m",
        "environment": {"STAGE": "release", "FORMAT": "tar"},
        "steps": [{"sh": "make package"}],
    }
    assert publish["when"] == {"all": [deploy, deploy]}
    assert publish["environment"] == {"STAGE": "release"}
    lint, unit = spec["stages"][3]["parallel"]
    assert lint == {"name": "lint", "steps": [{"sh": "make style"}, {"sh": "make types"}]}
    assert unit["steps"] == [{"sh": "make unit"}]
    # The group's post success follows its last stage, which is not the pipeline's last.
    assert spec["post"] == {"success": [{"echo": "released"}]}
    assert [line for line, _ in issues] == [6, 20, 34]
    assert "timeout` around nested stages" in issues[0][1]
    assert "post success" in issues[1][1]
    assert "`environment` of a stage nested in a parallel branch" in issues[2][1]
