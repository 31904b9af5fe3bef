"""The ``publish`` step: its spec, and the pure parts of publishing (no I/O).

A ``publish`` step uploads workspace files to an external repository and records
where they went. Three repository kinds:

* ``http``: a plain HTTP PUT per file under ``url`` (Nexus "raw", Artifactory
  "generic", any WebDAV server);
* ``maven``: the Maven repository layout (``group/as/path/artifact/version/
  artifact-version[-classifier].ext``) with ``.sha1``, ``.md5`` and ``.sha256``
  checksum files, a generated POM when none is given, and ``maven-metadata.xml``;
* ``pypi``: the legacy upload API of PyPI-style indexes (what ``twine`` uses).

The uploads themselves run on the agent (:mod:`conveyor.agent.publish`); this module
holds what can be decided without touching a file or the network: validation, the
Maven paths, the metadata document, ``${VAR}`` expansion of credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from xml.etree import ElementTree

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "MavenCoordinates",
    "MavenFile",
    "PublishSpec",
    "UnsetVariable",
    "expand_variables",
    "maven_file_name",
    "maven_metadata",
    "maven_version_dir",
    "split_extension",
]

PublishType = Literal["http", "maven", "pypi"]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAVEN_ID = re.compile(r"[A-Za-z0-9_.-]+")
_CLASSIFIER = re.compile(r"[A-Za-z0-9_.-]+")
_EXTENSION = re.compile(r"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*")
#: Double extensions kept whole when a Maven extension is taken from a file name.
_DOUBLE_EXTENSIONS = ("tar.gz", "tar.bz2", "tar.xz", "tar.zst")


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("publish", message)


class MavenFile(BaseModel):
    """A file of a Maven publication with its classifier and extension (default: taken
    from the file name, e.g. ``.jar``; a ``.pom`` file is the project's POM)."""

    model_config = ConfigDict(extra="forbid")

    file: Annotated[str, Field(min_length=1)]
    classifier: str | None = None
    extension: str | None = None

    @field_validator("classifier")
    @classmethod
    def _classifier(cls, value: str | None) -> str | None:
        if value is not None and not _CLASSIFIER.fullmatch(value):
            raise _error(f"invalid classifier {value!r} (use [A-Za-z0-9_.-])")
        return value

    @field_validator("extension")
    @classmethod
    def _extension(cls, value: str | None) -> str | None:
        if value is not None and not _EXTENSION.fullmatch(value):
            raise _error(f"invalid extension {value!r} (like jar or tar.gz, without a dot first)")
        return value


class PublishSpec(BaseModel):
    """``publish: {type, url, files, ...}`` in a pipeline step."""

    model_config = ConfigDict(extra="forbid")

    type: PublishType
    url: Annotated[str, Field(min_length=1, max_length=2000)]
    files: list[str | MavenFile] = Field(min_length=1)
    username: str | None = None
    password: str | None = None
    # http: keep the workspace-relative path under url (default: the file name only).
    keep_paths: bool = False
    # maven
    group_id: str | None = None
    artifact_id: str | None = None
    version: str | None = None
    packaging: str | None = None
    # pypi: the form field ":action" target is url itself (e.g. https://upload.pypi.org/legacy/)

    @field_validator("files", mode="before")
    @classmethod
    def _one_file(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | dict) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(https?://|\$\{)", value):
            raise _error(f"url must start with http:// or https://, got {value!r}")
        return value

    @model_validator(mode="after")
    def _per_type(self) -> PublishSpec:
        maven = ("group_id", "artifact_id", "version")
        if self.type == "maven":
            missing = [name for name in maven if not getattr(self, name)]
            if missing:
                raise _error(f"a maven publish needs {', '.join(missing)}")
            for name in maven:
                if not _MAVEN_ID.fullmatch(getattr(self, name) or ""):
                    raise _error(f"invalid {name} {getattr(self, name)!r} (use [A-Za-z0-9_.-])")
            if self.packaging is not None and not _EXTENSION.fullmatch(self.packaging):
                raise _error(f"invalid packaging {self.packaging!r}")
        else:
            given = [n for n in (*maven, "packaging") if getattr(self, n) is not None]
            if given:
                raise _error(f"{', '.join(given)} only apply to type: maven")
            if any(isinstance(f, MavenFile) for f in self.files):
                raise _error("files with classifier/extension only apply to type: maven")
        if self.keep_paths and self.type != "http":
            raise _error("keep_paths only applies to type: http")
        if (self.username is None) != (self.password is None):
            raise _error("give both username and password, or neither")
        return self

    @property
    def patterns(self) -> list[str]:
        return [f if isinstance(f, str) else f.file for f in self.files]


# ----------------------------------------------------------------- variables


class UnsetVariable(ValueError):
    """A ``${NAME}`` whose variable is not set in the step's environment."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"environment variable {name} is not set")


def expand_variables(text: str, env: Mapping[str, str]) -> str:
    """``${NAME}`` replaced by ``env[NAME]`` (nothing else is special: no ``$NAME``,
    no defaults, no shell); an unset variable raises :class:`UnsetVariable`."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise UnsetVariable(name)
        return env[name]

    return _VARIABLE.sub(sub, text)


# ----------------------------------------------------------------- maven


class MavenCoordinates(BaseModel):
    model_config = ConfigDict(frozen=True)

    group_id: str
    artifact_id: str
    version: str


def split_extension(name: str) -> str:
    """The Maven extension of a file name: ``app.jar`` -> ``jar``, ``app.tar.gz`` ->
    ``tar.gz``; empty when the name has none."""
    lower = name.lower()
    for double in _DOUBLE_EXTENSIONS:
        if lower.endswith("." + double):
            return name[-len(double) :]
    stem, dot, ext = name.rpartition(".")
    return ext if dot and stem else ""


def maven_version_dir(c: MavenCoordinates) -> str:
    """``com/example/app/1.0``: where the files of one version go, relative to the
    repository URL."""
    return "/".join([*c.group_id.split("."), c.artifact_id, c.version])


def maven_artifact_dir(c: MavenCoordinates) -> str:
    """``com/example/app``: where ``maven-metadata.xml`` lives."""
    return "/".join([*c.group_id.split("."), c.artifact_id])


def maven_file_name(c: MavenCoordinates, extension: str, classifier: str | None = None) -> str:
    """``app-1.0.jar``, ``app-1.0-sources.jar``."""
    suffix = f"-{classifier}" if classifier else ""
    return f"{c.artifact_id}-{c.version}{suffix}.{extension}"


def maven_pom(c: MavenCoordinates, packaging: str) -> str:
    """A minimal POM: enough for resolvers to accept the artifact (no dependencies)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<project xmlns="http://maven.apache.org/POM/4.0.0"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        ' xsi:schemaLocation="http://maven.apache.org/POM/4.0.0'
        ' https://maven.apache.org/xsd/maven-4.0.0.xsd">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>{_xml(c.group_id)}</groupId>\n"
        f"  <artifactId>{_xml(c.artifact_id)}</artifactId>\n"
        f"  <version>{_xml(c.version)}</version>\n"
        f"  <packaging>{_xml(packaging)}</packaging>\n"
        "</project>\n"
    )


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _is_release(version: str) -> bool:
    return not version.endswith("-SNAPSHOT")


def maven_metadata(c: MavenCoordinates, existing: str | None, updated: str) -> str:
    """The artifact-level ``maven-metadata.xml`` listing ``c.version`` next to the
    versions already in ``existing`` (the current document, or None when there is
    none). ``updated`` is the ``lastUpdated`` stamp (``yyyyMMddHHmmss``, UTC).

    ``latest`` is the version just published; ``release`` the newest non-SNAPSHOT
    one published (ours when it is a release, else what the document said)."""
    versions: list[str] = []
    release: str | None = None
    if existing:
        try:
            root = ElementTree.fromstring(existing)
        except ElementTree.ParseError:
            root = None
        if root is not None:
            versions = [
                v.text.strip()
                for v in root.findall("versioning/versions/version")
                if v.text and v.text.strip()
            ]
            found = root.find("versioning/release")
            release = found.text.strip() if found is not None and found.text else None
    if c.version not in versions:
        versions.append(c.version)
    if _is_release(c.version):
        release = c.version
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<metadata>",
        f"  <groupId>{_xml(c.group_id)}</groupId>",
        f"  <artifactId>{_xml(c.artifact_id)}</artifactId>",
        "  <versioning>",
        f"    <latest>{_xml(c.version)}</latest>",
    ]
    if release:
        lines.append(f"    <release>{_xml(release)}</release>")
    lines.append("    <versions>")
    lines.extend(f"      <version>{_xml(v)}</version>" for v in versions)
    lines += ["    </versions>", f"    <lastUpdated>{updated}</lastUpdated>", "  </versioning>"]
    lines += ["</metadata>", ""]
    return "\n".join(lines)
