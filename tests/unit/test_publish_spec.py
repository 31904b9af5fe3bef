"""The publish step's spec (validation, plan) and the pure Maven helpers."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from conveyor.core.pipeline import SpecError, parse_pipeline, plan_build
from conveyor.core.publish import (
    MavenCoordinates,
    UnsetVariable,
    expand_variables,
    maven_file_name,
    maven_metadata,
    maven_version_dir,
    split_extension,
)


def _pipeline(step: str) -> str:
    return f"name: p\nstages:\n  - name: s\n    steps:\n      - {step}\n"


def test_publish_step_is_planned_with_its_spec() -> None:
    pipeline = parse_pipeline(
        _pipeline("publish: {type: http, url: 'https://nexus/repository/raw/', files: 'dist/*'}")
    )
    step = plan_build(pipeline, {}).stages[0].steps[0]
    assert step.kind == "publish"
    assert step.name == "publish: http dist/*"
    assert step.publish is not None
    assert step.publish["files"] == ["dist/*"]
    assert step.publish["url"] == "https://nexus/repository/raw/"


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("publish: {type: maven, url: 'http://r/', files: [a.jar]}", "needs group_id"),
        ("publish: {type: ftp, url: 'http://r/', files: [a]}", "expected one of"),
        ("publish: {type: http, url: 'ftp://r/', files: [a]}", "must start with http"),
        ("publish: {type: http, url: 'http://r/', files: []}", "must not be empty"),
        ("publish: {type: http, url: 'http://r/', files: [a], username: u}", "give both"),
        ("publish: {type: pypi, url: 'http://r/', files: [a], version: '1'}", "only apply"),
        (
            "publish: {type: maven, url: 'http://r/', files: [a], group_id: g, artifact_id: 'a b', "
            "version: '1'}",
            "invalid artifact_id",
        ),
        ("publish: {type: pypi, url: 'http://r/', files: [a], keep_paths: true}", "keep_paths"),
        ("publish: {type: http, url: 'http://r/', files: [a], extra: 1}", "unknown field"),
    ],
)
def test_invalid_publish_specs_are_explained(step: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_pipeline(_pipeline(step))
    assert message in str(error.value)
    assert "conveyor.yml:5:" in str(error.value)


def test_expand_variables() -> None:
    env = {"USER": "me", "TOKEN": "t$k"}
    assert expand_variables("${USER}:${TOKEN}", env) == "me:t$k"
    assert expand_variables("$USER plain", env) == "$USER plain"
    with pytest.raises(UnsetVariable, match="NEXUS_PASSWORD is not set"):
        expand_variables("${NEXUS_PASSWORD}", env)


def test_maven_names() -> None:
    c = MavenCoordinates(group_id="org.example.tools", artifact_id="app", version="1.2")
    assert maven_version_dir(c) == "org/example/tools/app/1.2"
    assert maven_file_name(c, "jar") == "app-1.2.jar"
    assert maven_file_name(c, "jar", "sources") == "app-1.2-sources.jar"
    assert split_extension("dist.tar.gz") == "tar.gz"
    assert split_extension("app.jar") == "jar"
    assert split_extension("README") == ""
    assert split_extension(".hidden") == ""


def test_maven_metadata_merges_versions() -> None:
    c1 = MavenCoordinates(group_id="g", artifact_id="a", version="1.0")
    first = maven_metadata(c1, None, "20261204120000")
    snap = MavenCoordinates(group_id="g", artifact_id="a", version="1.1-SNAPSHOT")
    second = maven_metadata(snap, first, "20261204130000")
    root = ElementTree.fromstring(second)
    assert [v.text for v in root.findall("versioning/versions/version")] == ["1.0", "1.1-SNAPSHOT"]
    assert root.findtext("versioning/latest") == "1.1-SNAPSHOT"
    assert root.findtext("versioning/release") == "1.0"  # a snapshot is never the release
    assert root.findtext("versioning/lastUpdated") == "20261204130000"
    # Publishing a version again does not list it twice; garbage is replaced.
    again = ElementTree.fromstring(maven_metadata(c1, second, "x"))
    assert [v.text for v in again.findall("versioning/versions/version")] == ["1.0", "1.1-SNAPSHOT"]
    fresh = ElementTree.fromstring(maven_metadata(c1, "<not xml", "x"))
    assert [v.text for v in fresh.findall("versioning/versions/version")] == ["1.0"]
