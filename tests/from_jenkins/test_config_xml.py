"""Freestyle config.xml ↔ Conveyor pipeline: every supported field survives the round
trip; an unsupported element is refused naming it."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from conveyor.core.jenkins_config import (
    NotFreestyle,
    UnsupportedConfig,
    config_disabled,
    config_to_pipeline,
    dump_pipeline,
    is_scm_flow,
    pipeline_to_config,
)
from conveyor.core.pipeline import parse_pipeline

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = (FIXTURES / "freestyle.xml").read_text("utf-8")


def test_freestyle_project_translates_to_a_valid_pipeline() -> None:
    spec = config_to_pipeline(FIXTURE, "team-a/demo")
    pipeline = parse_pipeline(dump_pipeline(spec))
    assert pipeline.name == "team-a/demo"
    assert pipeline.description == "Builds and packages the demo service"
    assert pipeline.agent == "linux && docker"
    assert pipeline.concurrency == 1
    assert [(p.name, p.type, p.default) for p in pipeline.parameters] == [
        ("TARGET", "string", "staging"),
        ("MODE", "choice", None),
        ("DRY_RUN", "boolean", "true"),
    ]
    assert pipeline.parameters[1].choices == ["fast", "full"]
    assert pipeline.scm is not None
    assert (pipeline.scm.git, pipeline.scm.branch, pipeline.scm.credential) == (
        "https://git.example.com/team/demo.git",
        "release",
        "team-a/git",
    )
    assert pipeline.triggers is not None
    assert (pipeline.triggers.cron, pipeline.triggers.poll) == ("H 3 * * 1-5", "5m")
    steps = pipeline.stages[0].steps or []
    assert [s.sh.script for s in steps if s.sh] == [
        'echo "building for $TARGET"\nmake package',
        './test.sh --mode "$MODE"',
    ]
    assert pipeline.post.success[0].archive == ["dist/*.tar.gz", "reports/*.xml"]


def test_round_trip_keeps_every_supported_field() -> None:
    spec = config_to_pipeline(FIXTURE, "team-a/demo")
    xml = pipeline_to_config(dump_pipeline(spec))
    assert config_to_pipeline(xml, "team-a/demo") == spec
    # ... and a second trip is a fixed point of the XML too.
    assert pipeline_to_config(dump_pipeline(config_to_pipeline(xml, "team-a/demo"))) == xml


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("<buildWrappers/>", "<buildWrappers><x.Timestamper/></buildWrappers>"), "buildWrappers"),
        (("<disabled>false</disabled>", "<disabled>maybe</disabled>"), "<disabled>maybe"),
        (("hudson.tasks.Shell>", "hudson.tasks.BatchFile>"), "hudson.tasks.BatchFile"),
        (("<fingerprint>false", "<fingerprint>true"), "ArtifactArchiver <fingerprint>"),
        (("H/5 * * * *", "H 2 * * *"), "SCMTrigger spec"),
        (("<actions/>", "<actions/><logRotator/>"), "<logRotator>"),
        (
            (
                "hudson.model.BooleanParameterDefinition>",
                "hudson.model.PasswordParameterDefinition>",
            ),
            "PasswordParameterDefinition",
        ),
    ],
)
def test_unsupported_elements_are_refused_by_name(change: tuple[str, str], named: str) -> None:
    with pytest.raises(UnsupportedConfig) as exc:
        config_to_pipeline(FIXTURE.replace(*change), "demo")
    assert any(named in p for p in exc.value.problems), exc.value.problems


def test_pipeline_jobs_and_hostile_xml_are_refused() -> None:
    with pytest.raises(UnsupportedConfig, match="no inline <script>"):
        config_to_pipeline("<flow-definition/>", "demo")
    with pytest.raises(UnsupportedConfig, match="<maven2-moduleset>"):
        config_to_pipeline("<maven2-moduleset/>", "demo")
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><project>&a;</project>'
    with pytest.raises(UnsupportedConfig, match="DOCTYPE"):
        config_to_pipeline(bomb, "demo")
    with pytest.raises(UnsupportedConfig, match="well-formed"):
        config_to_pipeline("<project>", "demo")
    two_stages = "name: x\nstages:\n  - {name: a, steps: [sh: a]}\n  - {name: b, steps: [sh: b]}\n"
    with pytest.raises(NotFreestyle, match="more than one plain stage"):
        pipeline_to_config(two_stages)


def _flow(script: str) -> str:
    return (
        "<flow-definition plugin='workflow-job'><description>ops</description>"
        "<keepDependencies>false</keepDependencies><properties/>"
        "<definition class='org.jenkinsci.plugins.workflow.cps.CpsFlowDefinition'>"
        f"<script>{escape(script)}</script><sandbox>true</sandbox></definition>"
        "<triggers/><disabled>false</disabled></flow-definition>"
    )


def test_pipeline_jobs_go_through_the_jenkinsfile_importer() -> None:
    full = (FIXTURES / "full.Jenkinsfile").read_text("utf-8")
    # Everything translates once the constructs the importer reports are taken out.
    clean = "\n".join(
        line
        for line in full.splitlines()
        if "timestamps()" not in line and "unstable" not in line and "pollSCM" not in line
    ).replace("when { branch 'main' }", "")
    spec = config_to_pipeline(_flow(clean), "team-a/full")
    pipeline = parse_pipeline(dump_pipeline(spec))
    assert pipeline.description == "ops"
    assert [s.name for s in pipeline.stages] == ["Build", "Test", "Deploy", "Main only"]
    # What the importer cannot translate is a 400 naming each construct by script line.
    with pytest.raises(UnsupportedConfig) as exc:
        config_to_pipeline(_flow((FIXTURES / "ops.Jenkinsfile").read_text("utf-8")), "ops")
    lines = [p.split(":")[0] for p in exc.value.problems]
    assert lines == [f"script line {n}" for n in (21, 34, 55, 70)]


def test_disabled_is_read_apart_from_the_pipeline_and_written_back() -> None:
    disabled = FIXTURE.replace("<disabled>false</disabled>", "<disabled>true</disabled>")
    assert config_disabled(disabled) and not config_disabled(FIXTURE)
    # Not part of the pipeline: the same spec either way.
    spec = config_to_pipeline(disabled, "team-a/demo")
    assert spec == config_to_pipeline(FIXTURE, "team-a/demo")
    xml = pipeline_to_config(dump_pipeline(spec), disabled=True)
    assert "<disabled>true</disabled>" in xml and config_disabled(xml)
    assert "<disabled>false</disabled>" in pipeline_to_config(dump_pipeline(spec))


SCM_FLOW = """\
<?xml version='1.1' encoding='UTF-8'?>
<flow-definition plugin="workflow-job@1400.v7fd111b_ec82f">
  <actions/>
  <description>Pipeline from the repository</description>
  <keepDependencies>false</keepDependencies>
  <properties/>
  <definition class="org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition" plugin="wf">
    <scm class="hudson.plugins.git.GitSCM" plugin="git@5.2.1">
      <configVersion>2</configVersion>
      <userRemoteConfigs>
        <hudson.plugins.git.UserRemoteConfig>
          <url>https://git.example.com/team/app.git</url>
          <credentialsId>team-a/git</credentialsId>
        </hudson.plugins.git.UserRemoteConfig>
      </userRemoteConfigs>
      <branches>
        <hudson.plugins.git.BranchSpec>
          <name>*/release</name>
        </hudson.plugins.git.BranchSpec>
      </branches>
      <doGenerateSubmoduleConfigurations>false</doGenerateSubmoduleConfigurations>
      <submoduleCfg class="empty-list"/>
      <extensions/>
    </scm>
    <scriptPath>ci/Jenkinsfile</scriptPath>
    <lightweight>true</lightweight>
  </definition>
  <triggers/>
  <disabled>false</disabled>
</flow-definition>
"""


def test_pipeline_from_scm_maps_to_a_job_reading_its_repository() -> None:
    spec = config_to_pipeline(SCM_FLOW, "team-a/app")
    assert spec == {
        "name": "team-a/app",
        "description": "Pipeline from the repository",
        "scm": {
            "git": "https://git.example.com/team/app.git",
            "credential": "team-a/git",
            "branch": "release",
            "path": "ci/Jenkinsfile",
        },
    }
    pipeline = parse_pipeline(dump_pipeline(spec))
    assert pipeline.from_scm and pipeline.scm is not None
    assert is_scm_flow(dump_pipeline(spec))
    # Round trip: url, branch, credentialsId and scriptPath are kept.
    xml = pipeline_to_config(dump_pipeline(spec))
    assert "CpsScmFlowDefinition" in xml and "<scriptPath>ci/Jenkinsfile</scriptPath>" in xml
    assert config_to_pipeline(xml, "team-a/app") == spec
    assert pipeline_to_config(dump_pipeline(config_to_pipeline(xml, "team-a/app"))) == xml
    # The default script path is Jenkins' own.
    default = SCM_FLOW.replace("<scriptPath>ci/Jenkinsfile</scriptPath>", "")
    assert config_to_pipeline(default, "x")["scm"]["path"] == "Jenkinsfile"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (('class="hudson.plugins.git.GitSCM"', 'class="hudson.scm.SubversionSCM"'), "Subversion"),
        (("<extensions/>", "<extensions><x.CleanCheckout/></extensions>"), "<extensions>"),
        (("<lightweight>true", "<lightweight>sometimes"), "lightweight"),
        (("</scriptPath>", "</scriptPath><other/>"), "<other>"),
    ],
)
def test_pipeline_from_scm_refuses_what_it_cannot_keep(change: tuple[str, str], named: str) -> None:
    with pytest.raises(UnsupportedConfig) as exc:
        config_to_pipeline(SCM_FLOW.replace(*change), "demo")
    assert any(named in p for p in exc.value.problems), exc.value.problems
