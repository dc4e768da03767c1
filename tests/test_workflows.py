"""The GitHub Actions workflows (.github/workflows) follow the rules a reader can check.

* every action is pinned to the full 40-hex commit SHA of a release, with its tag in a trailing
  comment (`uses: actions/checkout@<sha> # v7.0.1`), and one action has one pin everywhere;
* every checkout sets `persist-credentials: false`;
* each workflow grants `contents: read` and nothing else at the top; the two permissions that
  publish the site (`pages: write`, `id-token: write`) belong to the deploy job alone, which runs
  no code of the repository;
* zizmor, the GitHub Actions linter pinned in requirements.txt, reports nothing on them offline
  (pedantic persona). A finding that must be accepted is silenced on its line with zizmor's
  inline comment, `# zizmor: ignore[AUDIT] reason`, and the reason is required here; zizmor's
  configuration files are not read (--no-config), so nothing is silenced out of sight.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])

# owner/repo[/path]@<40 hex>; `./local-action` needs no pin (it is this repository's own code).
PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[^@\s]+)?@(?P<sha>[0-9a-f]{40})$")
# The tag comment after the pin: `# v7`, `# v7.0.1`.
TAG_COMMENT = r"[ \t]+#[ \t]*(?P<tag>v\d+(\.\d+)*)[ \t]*$"
PUBLISHING = {"pages", "id-token"}
IGNORE_COMMENT = re.compile(r"#\s*zizmor:\s*ignore\[[^\]]*\](?P<reason>.*)$")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def steps_and_jobs(workflow: dict):
    """Yield (job id, job, step or None) for every job and every step of every job."""
    for job_id, job in workflow["jobs"].items():
        yield job_id, job, None
        for step in job.get("steps", []):
            yield job_id, job, step


def uses_of(workflow: dict) -> list[str]:
    """Every `uses:` of the workflow: those of the steps and those of reusable-workflow jobs."""
    found = []
    for _, job, step in steps_and_jobs(workflow):
        where = job if step is None else step
        if "uses" in where:
            found.append(where["uses"])
    return found


def granted(permissions) -> set[str]:
    """The scopes a `permissions:` value grants write access to (a mapping or read-all/write-all)."""
    if permissions is None:
        return set()
    if isinstance(permissions, str):
        assert permissions in ("read-all", "write-all"), permissions
        return {"*"} if permissions == "write-all" else set()
    return {scope for scope, level in permissions.items() if level == "write"}


def test_there_are_the_two_workflows():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "pages.yml"}, [p.name for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_tag(path: Path):
    text = path.read_text(encoding="utf-8")
    uses = uses_of(load(path))
    assert uses, f"{path.name} uses no action"
    for ref in uses:
        if ref.startswith("./"):
            continue
        assert PINNED.match(ref), (
            f"{path.name}: `uses: {ref}` is not pinned to a full 40-hex commit SHA "
            "(write `uses: owner/repo@<sha> # vX.Y.Z`)")
        line = re.search(rf"^[ \t]*(-[ \t]+)?uses:[ \t]*{re.escape(ref)}{TAG_COMMENT}", text, re.MULTILINE)
        assert line, f"{path.name}: `uses: {ref}` lacks its tag as a trailing comment (`# vX.Y.Z`)"


def test_one_pin_per_action_across_workflows():
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOWS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(rf"uses:[ \t]*(?P<action>[^@\s]+)@(?P<sha>[0-9a-f]{{40}}){TAG_COMMENT}", text,
                                 re.MULTILINE):
            pins.setdefault(match["action"], set()).add((match["sha"], match["tag"]))
    assert pins, "no pinned action found"
    for action, seen in pins.items():
        assert len(seen) == 1, f"{action} is pinned to different commits or tags: {sorted(seen)}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkouts_do_not_persist_credentials(path: Path):
    checkouts = [(job_id, step) for job_id, _, step in steps_and_jobs(load(path))
                 if step is not None and step.get("uses", "").startswith("actions/checkout@")]
    for job_id, step in checkouts:
        value = step.get("with", {}).get("persist-credentials")
        assert value is False, (
            f"{path.name}, job {job_id}: actions/checkout without `persist-credentials: false` "
            f"(got {value!r}): the token would stay in .git/config for every later step")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_read_at_the_top_and_publishing_only_in_deploy(path: Path):
    workflow = load(path)
    assert workflow.get("permissions") == {"contents": "read"}, (
        f"{path.name}: the workflow-level permissions must be exactly `contents: read`, "
        f"got {workflow.get('permissions')!r}")
    for job_id, job in workflow["jobs"].items():
        scopes = granted(job.get("permissions"))
        assert "*" not in scopes, f"{path.name}, job {job_id}: write-all"
        if scopes & PUBLISHING:
            assert job_id == "deploy", (
                f"{path.name}, job {job_id}: {sorted(scopes & PUBLISHING)} write belongs to the deploy job only")
            assert scopes == PUBLISHING, f"{path.name}, job deploy: writes {sorted(scopes)}, needs only {sorted(PUBLISHING)}"
            assert not any("run" in step for step in job.get("steps", [])), (
                f"{path.name}, job deploy: the job that may publish runs no shell step")
        else:
            assert not scopes, f"{path.name}, job {job_id}: writes {sorted(scopes)}"


def test_the_deploy_job_publishes_pages():
    deploy = load(WORKFLOW_DIR / "pages.yml")["jobs"].get("deploy")
    assert deploy, "pages.yml has a job named deploy"
    assert deploy.get("permissions") == {"pages": "write", "id-token": "write"}, deploy.get("permissions")
    assert [step.get("uses", "").split("@")[0] for step in deploy["steps"]] == ["actions/deploy-pages"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_zizmor_ignore_comments_give_a_reason(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = IGNORE_COMMENT.search(line)
        if match:
            assert match["reason"].strip(" -:"), (
                f"{path.name}:{number}: a zizmor ignore comment says why the finding is accepted: {line.strip()}")


def zizmor_executable() -> str | None:
    """The zizmor of this environment (next to its python: `make` does not put .venv/bin on PATH),
    else one on PATH."""
    beside = Path(sys.executable).with_name("zizmor")
    if beside.is_file():
        return str(beside)
    return shutil.which("zizmor")


def pinned_zizmor_version() -> str:
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    match = re.search(r"^zizmor==(\S+)$", requirements, re.MULTILINE)
    assert match, "requirements.txt pins zizmor"
    return match[1]


def test_zizmor_reports_nothing():
    zizmor = zizmor_executable()
    if zizmor is None:
        pytest.skip("the zizmor executable is not installed (it is in requirements.txt: "
                    "pip install -r requirements.txt, or run the tests through make)")
    version = subprocess.run([zizmor, "--version"], capture_output=True, text=True, check=True).stdout.split()
    assert version[-1] == pinned_zizmor_version(), (
        f"{zizmor} is zizmor {version[-1]}, requirements.txt pins {pinned_zizmor_version()}: "
        "install the pinned one (pip install -r requirements.txt)")
    files = [str(p.relative_to(ROOT)) for p in WORKFLOWS]
    options = ["--offline", "--no-config", "--persona", "pedantic", "--strict-collection", "--no-progress"]
    result = subprocess.run([zizmor, *options, "--format", "json", *files],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip(), f"zizmor printed no report (exit {result.returncode}):\n{result.stderr}"
    findings = [f for f in json.loads(result.stdout) if not f.get("ignored")]
    if findings or result.returncode != 0:
        report = subprocess.run([zizmor, *options, "--format", "plain", "--color", "never", *files],
                                cwd=ROOT, capture_output=True, text=True)
        pytest.fail(f"zizmor {' '.join(options)} {' '.join(files)} exited {result.returncode} with "
                    f"{len(findings)} finding(s) "
                    f"({', '.join(sorted({f['ident'] for f in findings}))}); its report:\n\n"
                    f"{report.stdout}\n{report.stderr}")
