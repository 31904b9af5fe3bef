"""Jenkins freestyle ``config.xml`` ↔ Conveyor pipeline.

Supported: ``hudson.model.FreeStyleProject`` with a description, string / choice /
boolean / text parameters, ``assignedNode``, ``concurrentBuild``, ``TimerTrigger``
and ``SCMTrigger`` (``H/N * * * *``), a git SCM (one URL, one branch, optional
credentials), ``hudson.tasks.Shell`` builders and one ``ArtifactArchiver``.

Mapping: the builders become the steps of one stage ``build``; the archiver becomes
a ``post.always`` (or, with ``onlyIfSuccessful``, ``post.success``) archive step.
An element that is not supported — or a supported one with a value Conveyor cannot
honour — is refused with :class:`UnsupportedConfig` naming it; nothing is dropped.
Pure code, no I/O.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import Any

import yaml

BUILD_STAGE = "build"
SCM_FLOW = "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition"
_PARAM_TYPES = {
    "hudson.model.StringParameterDefinition": "string",
    "hudson.model.TextParameterDefinition": "string",
    "hudson.model.ChoiceParameterDefinition": "choice",
    "hudson.model.BooleanParameterDefinition": "boolean",
}
_EVERY_N_MINUTES = re.compile(r"(?:H|\*)/(\d+) \* \* \* \*")
_POLL_MINUTES = re.compile(r"(\d+)m")

# Elements Jenkins writes with neutral values: accepted when they hold exactly these.
_NEUTRAL = {
    "keepDependencies": {"false"},
    "canRoam": {"true", "false"},  # implied by assignedNode
    "disabled": {"false", "true"},  # honoured apart: see config_disabled()
    "blockBuildWhenDownstreamBuilding": {"false"},
    "blockBuildWhenUpstreamBuilding": {"false"},
    "actions": {""},
    "buildWrappers": {""},
}
_ARCHIVER_NEUTRAL = {
    "allowEmptyArchive": {"false", "true"},
    "fingerprint": {"false"},
    "defaultExcludes": {"true"},
    "caseSensitive": {"true"},
    "followSymlinks": {"true", "false"},
    "excludes": {""},
}
_GIT_NEUTRAL = {
    "configVersion": {"2"},
    "doGenerateSubmoduleConfigurations": {"false"},
    "submoduleCfg": {""},
    "extensions": {""},
    "gitTool": {"Default"},
    "browser": {""},
}


class UnsupportedConfig(ValueError):
    """The config.xml holds something Conveyor cannot represent; names every element."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _text(el: ET.Element | None) -> str:
    return "" if el is None or el.text is None else el.text.strip()


def _raw(el: ET.Element | None) -> str:
    return "" if el is None or el.text is None else el.text


def config_to_pipeline(xml: str, name: str) -> dict[str, Any]:
    """A pipeline mapping (validate it with conveyor.core.pipeline) from a freestyle
    config.xml; raise :class:`UnsupportedConfig` naming what cannot be translated."""
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise UnsupportedConfig(["DOCTYPE/ENTITY declarations are not accepted"])
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UnsupportedConfig([f"not well-formed XML: {exc}"]) from None
    problems: list[str] = []
    if root.tag == "flow-definition":
        return _flow_definition(root, name)
    if root.tag != "project":
        raise UnsupportedConfig(
            [f"only freestyle projects and pipeline jobs are supported, got <{root.tag}>"]
        )
    out: dict[str, Any] = {"name": name}
    steps: list[dict[str, Any]] = []
    post: dict[str, Any] = {}
    triggers: dict[str, Any] = {}
    for el in root:
        tag = el.tag
        if tag in _NEUTRAL:
            if _text(el) not in _NEUTRAL[tag] or len(el):
                problems.append(f"<{tag}>{_text(el)}</{tag}> is not supported")
        elif tag == "description":
            if _text(el):
                out["description"] = _raw(el)
        elif tag == "assignedNode":
            if _text(el):
                out["agent"] = _text(el)
        elif tag == "concurrentBuild":
            if _text(el) == "false":
                out["concurrency"] = 1
            elif _text(el) != "true":
                problems.append(f"<concurrentBuild>{_text(el)}</concurrentBuild>")
        elif tag == "properties":
            params = _parameters(el, problems)
            if params:
                out["parameters"] = params
        elif tag == "scm":
            scm = _scm(el, problems)
            if scm is not None:
                out["scm"] = scm
        elif tag == "triggers":
            triggers.update(_triggers(el, problems))
        elif tag == "builders":
            for builder in el:
                if builder.tag != "hudson.tasks.Shell":
                    problems.append(f"builder <{builder.tag}> is not supported")
                    continue
                for child in builder:
                    if child.tag not in ("command", "configuredLocalRules") or (
                        child.tag == "configuredLocalRules" and len(child)
                    ):
                        problems.append(f"hudson.tasks.Shell <{child.tag}> is not supported")
                steps.append({"sh": _raw(builder.find("command"))})
        elif tag == "publishers":
            post.update(_publishers(el, problems))
        else:
            problems.append(f"<{tag}> is not supported")
    if problems:
        raise UnsupportedConfig(problems)
    if triggers:
        out["triggers"] = triggers
    out["stages"] = [{"name": BUILD_STAGE, "steps": steps or [{"echo": "no build steps"}]}]
    if post:
        out["post"] = post
    return out


def config_disabled(xml: str) -> bool:
    """Whether the config.xml says ``<disabled>true</disabled>``. Conveyor keeps that
    apart from the pipeline (an operational state of the job, not part of its spec)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UnsupportedConfig([f"not well-formed XML: {exc}"]) from None
    return _text(root.find("disabled")) == "true"


@lru_cache(maxsize=8192)
def is_scm_flow(spec: str) -> bool:
    """Whether a stored spec is a job reading its pipeline from its repository (cached:
    ``/api/json`` asks for every job, and specs change rarely)."""
    try:
        data = yaml.safe_load(spec)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and bool(data.get("scm")) and not data.get("stages")


def _scm_flow_definition(definition: ET.Element, problems: list[str]) -> dict[str, Any] | None:
    """``CpsScmFlowDefinition``: the Jenkinsfile lives in a git repository. The job
    becomes a Conveyor job reading its pipeline from the repository (``scm.path``)."""
    scm: dict[str, Any] | None = None
    path = "Jenkinsfile"
    for child in definition:
        if child.tag == "scm":
            scm = _scm(child, problems)
            if scm is None and child.get("class") == "hudson.scm.NullSCM":
                problems.append("a pipeline from SCM needs a git <scm>, got hudson.scm.NullSCM")
        elif child.tag == "scriptPath":
            path = _text(child) or path
        elif child.tag == "lightweight":
            if _text(child) not in ("true", "false"):
                problems.append(f"<lightweight>{_text(child)}</lightweight>")
        else:
            problems.append(f"pipeline definition <{child.tag}> is not supported")
    if scm is None:
        if not problems:
            problems.append("a pipeline from SCM needs an <scm> block")
        return None
    scm["path"] = path
    return scm


def _flow_definition(root: ET.Element, name: str) -> dict[str, Any]:
    """A pipeline job whose Jenkinsfile is inline (``CpsFlowDefinition``): its script
    goes through the Jenkinsfile importer, and is accepted only when all of it
    translates (the importer's report becomes the 400)."""
    from conveyor.core.jenkinsfile import GroovySyntaxError, translate_jenkinsfile

    problems: list[str] = []
    script: str | None = None
    scm: dict[str, Any] | None = None
    description = ""
    declared: list[str] = []
    for el in root:
        if el.tag in _NEUTRAL or el.tag == "triggers":
            if _text(el) not in _NEUTRAL.get(el.tag, {""}) or len(el):
                problems.append(f"<{el.tag}> with content is not supported")
        elif el.tag == "description":
            description = _raw(el)
        elif el.tag == "properties":
            # Jenkins copies the Jenkinsfile's parameters here; the Jenkinsfile is the source.
            declared = [p["name"] for p in _parameters(el, problems)]
        elif el.tag == "definition" and el.get("class") == SCM_FLOW:
            scm = _scm_flow_definition(el, problems)
        elif el.tag == "definition":
            if el.get("class") != "org.jenkinsci.plugins.workflow.cps.CpsFlowDefinition":
                problems.append(
                    f"pipeline definition {el.get('class')!r} is not supported (only an inline "
                    "script or a Jenkinsfile from git SCM)"
                )
                continue
            script = _raw(el.find("script"))
            for child in el:
                if child.tag not in ("script", "sandbox"):
                    problems.append(f"pipeline definition <{child.tag}> is not supported")
        else:
            problems.append(f"<{el.tag}> is not supported")
    if scm is not None and not problems:
        # The Jenkinsfile in the repository is the source (Jenkins, too, copies its
        # parameters into <properties> at each build): it is read at build time.
        out: dict[str, Any] = {"name": name}
        if description:
            out["description"] = description
        out["scm"] = scm
        return out
    if script is None and not problems:
        problems.append("the pipeline job has no inline <script>")
    if problems or script is None:
        raise UnsupportedConfig(problems)
    try:
        translation = translate_jenkinsfile(script, name)
    except GroovySyntaxError as exc:
        raise UnsupportedConfig([f"script line {exc.line}: {exc.message}"]) from None
    if translation.issues:
        raise UnsupportedConfig(
            [f"script line {i.line}: not translated: {i.message}" for i in translation.issues]
        )
    pipeline = translation.pipeline
    names = [p["name"] for p in pipeline.get("parameters", [])]
    if declared and declared != names:
        raise UnsupportedConfig(
            [f"job parameters {declared} differ from the script's parameters {names}"]
        )
    if description:
        pipeline = {"name": name, "description": description, **pipeline}
    return pipeline


def _parameters(properties: ET.Element, problems: list[str]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for prop in properties:
        if prop.tag != "hudson.model.ParametersDefinitionProperty":
            problems.append(f"property <{prop.tag}> is not supported")
            continue
        for definition in prop.iter():
            kind = _PARAM_TYPES.get(definition.tag)
            if kind is None:
                if definition.tag.endswith("ParameterDefinition"):
                    problems.append(f"parameter <{definition.tag}> is not supported")
                continue
            param: dict[str, Any] = {"name": _text(definition.find("name"))}
            if kind != "string":
                param["type"] = kind
            if kind == "choice":
                param["choices"] = [_raw(s) for s in definition.iter("string")]
            default = definition.find("defaultValue")
            if default is not None and (_raw(default) or kind == "boolean"):
                param["default"] = _text(default) if kind == "boolean" else _raw(default)
            description = _raw(definition.find("description"))
            if description:
                param["description"] = description
            trim = _text(definition.find("trim"))
            if trim == "true":
                problems.append(f"parameter {param['name']!r}: <trim>true</trim> is not supported")
            params.append(param)
    return params


def _scm(el: ET.Element, problems: list[str]) -> dict[str, Any] | None:
    cls = el.get("class", "")
    if cls == "hudson.scm.NullSCM":
        return None
    if cls != "hudson.plugins.git.GitSCM":
        problems.append(f"scm class {cls!r} is not supported (only hudson.plugins.git.GitSCM)")
        return None
    scm: dict[str, Any] = {}
    remotes = el.findall("userRemoteConfigs/hudson.plugins.git.UserRemoteConfig")
    branches = el.findall("branches/hudson.plugins.git.BranchSpec")
    if len(remotes) != 1 or len(branches) > 1:
        problems.append("git scm: exactly one repository URL and at most one branch are supported")
        return None
    for child in remotes[0]:
        if child.tag == "url":
            scm["git"] = _text(child)
        elif child.tag == "credentialsId":
            if _text(child):
                scm["credential"] = _text(child)
        elif child.tag not in ("name", "refspec") or _text(child):
            problems.append(f"git scm <{child.tag}> is not supported")
    if branches:
        branch = _text(branches[0].find("name"))
        branch = branch.removeprefix("*/").removeprefix("refs/heads/")
        if branch and branch != "main":
            scm["branch"] = branch
    for child in el:
        if child.tag in ("userRemoteConfigs", "branches"):
            continue
        allowed = _GIT_NEUTRAL.get(child.tag)
        if allowed is None or _text(child) not in allowed or len(child):
            problems.append(f"git scm <{child.tag}> is not supported")
    return scm


def _triggers(el: ET.Element, problems: list[str]) -> dict[str, Any]:
    triggers: dict[str, Any] = {}
    for trigger in el:
        lines = [
            line.strip()
            for line in _raw(trigger.find("spec")).splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        if trigger.tag == "hudson.triggers.TimerTrigger" and len(lines) == 1:
            triggers["cron"] = lines[0]
        elif trigger.tag == "hudson.triggers.SCMTrigger" and len(lines) == 1:
            every = _EVERY_N_MINUTES.fullmatch(lines[0])
            if every is None:
                problems.append(f"SCMTrigger spec {lines[0]!r}: only 'H/N * * * *' is supported")
            else:
                triggers["poll"] = f"{every.group(1)}m"
            hooks = trigger.find("ignorePostCommitHooks")
            if _text(hooks) not in ("", "false"):
                problems.append("SCMTrigger <ignorePostCommitHooks>true is not supported")
        else:
            problems.append(f"trigger <{trigger.tag}> is not supported (one spec line each)")
    return triggers


def _publishers(el: ET.Element, problems: list[str]) -> dict[str, Any]:
    post: dict[str, Any] = {}
    for publisher in el:
        if publisher.tag != "hudson.tasks.ArtifactArchiver" or post:
            problems.append(f"publisher <{publisher.tag}> is not supported")
            continue
        patterns = [p.strip() for p in _text(publisher.find("artifacts")).split(",") if p.strip()]
        block = "success" if _text(publisher.find("onlyIfSuccessful")) == "true" else "always"
        for child in publisher:
            if child.tag in ("artifacts", "onlyIfSuccessful"):
                continue
            allowed = _ARCHIVER_NEUTRAL.get(child.tag)
            if allowed is None or _text(child) not in allowed:
                problems.append(f"ArtifactArchiver <{child.tag}>{_text(child)} is not supported")
        if patterns:
            post[block] = [{"archive": patterns}]
    return post


# ------------------------------------------------------------------------- back


class NotFreestyle(ValueError):
    """The pipeline has more than a freestyle project can say."""


def pipeline_to_config(spec: str, disabled: bool = False) -> str:
    """The freestyle config.xml of a pipeline shaped like one (see the module doc), or
    the pipeline-from-SCM config.xml of a job reading its pipeline from its repository;
    raise :class:`NotFreestyle` naming what does not fit."""
    data = yaml.safe_load(spec)
    if not isinstance(data, dict):
        raise NotFreestyle("the pipeline is not a mapping")
    if data.get("scm") and not data.get("stages"):
        return _scm_flow_config(data, disabled)
    extra = sorted(
        set(data)
        - {"name", "description", "agent", "concurrency", "parameters", "scm", "triggers"}
        - {"stages", "post"}
    )
    stages = data.get("stages") or []
    problems = [f"field {k!r}" for k in extra]
    if len(stages) != 1 or set(stages[0]) - {"name", "steps"}:
        problems.append("more than one plain stage")
    steps = stages[0].get("steps", []) if len(stages) == 1 else []
    if any(set(s) != {"sh"} or not isinstance(s["sh"], str) for s in steps):
        problems.append("steps other than plain `sh`")
    post = data.get("post") or {}
    archives = [(k, v) for k, v in post.items()]
    if len(archives) > 1 or any(
        k not in ("always", "success") or len(v) != 1 or set(v[0]) != {"archive"}
        for k, v in archives
    ):
        problems.append("post steps other than one archive step")
    if set(data.get("scm") or {}) - {"git", "branch", "credential"}:
        problems.append("scm fields other than git, branch and credential")
    if data.get("concurrency") not in (None, 1):
        problems.append("concurrency other than 1")
    triggers = data.get("triggers") or {}
    if set(triggers) - {"cron", "poll"} or (
        "poll" in triggers and not _POLL_MINUTES.fullmatch(str(triggers["poll"]))
    ):
        problems.append("triggers other than cron and poll: Nm")
    if problems:
        raise NotFreestyle("not a freestyle-shaped pipeline: " + ", ".join(problems))

    project = ET.Element("project")
    ET.SubElement(project, "actions")
    ET.SubElement(project, "description").text = data.get("description") or ""
    ET.SubElement(project, "keepDependencies").text = "false"
    properties = ET.SubElement(project, "properties")
    if data.get("parameters"):
        prop = ET.SubElement(properties, "hudson.model.ParametersDefinitionProperty")
        definitions = ET.SubElement(prop, "parameterDefinitions")
        for p in data["parameters"]:
            _parameter_xml(definitions, p)
    _scm_xml(project, data.get("scm"))
    if data.get("agent"):
        ET.SubElement(project, "assignedNode").text = str(data["agent"])
    ET.SubElement(project, "canRoam").text = "false" if data.get("agent") else "true"
    ET.SubElement(project, "disabled").text = str(disabled).lower()
    ET.SubElement(project, "blockBuildWhenDownstreamBuilding").text = "false"
    ET.SubElement(project, "blockBuildWhenUpstreamBuilding").text = "false"
    trigger_el = ET.SubElement(project, "triggers")
    if "cron" in triggers:
        timer = ET.SubElement(trigger_el, "hudson.triggers.TimerTrigger")
        ET.SubElement(timer, "spec").text = str(triggers["cron"])
    if "poll" in triggers:
        minutes = str(triggers["poll"]).removesuffix("m")
        poll = ET.SubElement(trigger_el, "hudson.triggers.SCMTrigger")
        ET.SubElement(poll, "spec").text = f"H/{minutes} * * * *"
        ET.SubElement(poll, "ignorePostCommitHooks").text = "false"
    ET.SubElement(project, "concurrentBuild").text = (
        "false" if data.get("concurrency") == 1 else "true"
    )
    builders = ET.SubElement(project, "builders")
    for step in steps:
        shell = ET.SubElement(builders, "hudson.tasks.Shell")
        ET.SubElement(shell, "command").text = step["sh"]
        ET.SubElement(shell, "configuredLocalRules")
    publishers = ET.SubElement(project, "publishers")
    for block, block_steps in archives:
        patterns = block_steps[0]["archive"]
        patterns = [patterns] if isinstance(patterns, str) else patterns
        archiver = ET.SubElement(publishers, "hudson.tasks.ArtifactArchiver")
        ET.SubElement(archiver, "artifacts").text = ", ".join(patterns)
        ET.SubElement(archiver, "allowEmptyArchive").text = "false"
        ET.SubElement(archiver, "onlyIfSuccessful").text = str(block == "success").lower()
        ET.SubElement(archiver, "fingerprint").text = "false"
        ET.SubElement(archiver, "defaultExcludes").text = "true"
        ET.SubElement(archiver, "caseSensitive").text = "true"
        ET.SubElement(archiver, "followSymlinks").text = "false"
    ET.SubElement(project, "buildWrappers")
    ET.indent(project, "  ")
    body = ET.tostring(project, encoding="unicode")
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + body + "\n"


def _scm_flow_config(data: dict[str, Any], disabled: bool) -> str:
    scm = data["scm"]
    extra = sorted(set(data) - {"name", "description", "scm"})
    extra += sorted(f"scm.{k}" for k in set(scm) - {"git", "branch", "credential", "path"})
    if extra:
        raise NotFreestyle("not expressible as a pipeline-from-SCM config.xml: " + ", ".join(extra))
    flow = ET.Element("flow-definition")
    ET.SubElement(flow, "actions")
    ET.SubElement(flow, "description").text = data.get("description") or ""
    ET.SubElement(flow, "keepDependencies").text = "false"
    ET.SubElement(flow, "properties")
    definition = ET.SubElement(flow, "definition", {"class": SCM_FLOW})
    _scm_xml(definition, scm)
    ET.SubElement(definition, "scriptPath").text = str(scm.get("path") or "conveyor.yml")
    ET.SubElement(definition, "lightweight").text = "true"
    ET.SubElement(flow, "triggers")
    ET.SubElement(flow, "disabled").text = str(disabled).lower()
    ET.indent(flow, "  ")
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + ET.tostring(flow, "unicode") + "\n"


def _parameter_xml(parent: ET.Element, p: dict[str, Any]) -> None:
    kind = p.get("type", "string")
    tag = {
        "string": "hudson.model.StringParameterDefinition",
        "choice": "hudson.model.ChoiceParameterDefinition",
        "boolean": "hudson.model.BooleanParameterDefinition",
    }[kind]
    el = ET.SubElement(parent, tag)
    ET.SubElement(el, "name").text = str(p["name"])
    ET.SubElement(el, "description").text = str(p.get("description") or "")
    if kind == "choice":
        choices = ET.SubElement(el, "choices", {"class": "java.util.Arrays$ArrayList"})
        array = ET.SubElement(choices, "a", {"class": "string-array"})
        for choice in p.get("choices") or []:
            ET.SubElement(array, "string").text = str(choice)
    elif kind == "boolean":
        default = p.get("default", False)
        ET.SubElement(el, "defaultValue").text = str(default).lower()
    else:
        ET.SubElement(el, "defaultValue").text = str(p.get("default") or "")
        ET.SubElement(el, "trim").text = "false"


def _scm_xml(project: ET.Element, scm: dict[str, Any] | None) -> None:
    if not scm:
        ET.SubElement(project, "scm", {"class": "hudson.scm.NullSCM"})
        return
    el = ET.SubElement(project, "scm", {"class": "hudson.plugins.git.GitSCM"})
    ET.SubElement(el, "configVersion").text = "2"
    remotes = ET.SubElement(el, "userRemoteConfigs")
    remote = ET.SubElement(remotes, "hudson.plugins.git.UserRemoteConfig")
    ET.SubElement(remote, "url").text = str(scm["git"])
    if scm.get("credential"):
        ET.SubElement(remote, "credentialsId").text = str(scm["credential"])
    branches = ET.SubElement(el, "branches")
    spec = ET.SubElement(branches, "hudson.plugins.git.BranchSpec")
    ET.SubElement(spec, "name").text = f"*/{scm.get('branch') or 'main'}"
    ET.SubElement(el, "doGenerateSubmoduleConfigurations").text = "false"
    ET.SubElement(el, "submoduleCfg", {"class": "empty-list"})
    ET.SubElement(el, "extensions")


def dump_pipeline(pipeline: dict[str, Any]) -> str:
    return yaml.safe_dump(pipeline, sort_keys=False, allow_unicode=True, width=100)
