"""A scripted Kaggle behind the REAL ``kaggle`` CLI: only ``requests.Session.send`` is replaced.

``$KERNEL_KAGGLE_CLI`` is set to a small wrapper script; every call of it runs ``kaggle.cli.main()``
in a separate process whose ``requests.Session.send`` answers from :class:`FakeServer`: argument
parsing, authentication, request building, response parsing, file writing and the printed output
are the client's own.

Why a fork server: importing the client costs 0.5 s (2-3 s on a loaded 2-core machine), and a
``--push --wait`` run makes about ten calls. So :class:`CliServer` starts ONE process that patches
``Session.send`` and imports ``kaggle.cli`` (authenticating from the environment, as the CLI does
at import), and the wrapper hands it its argv, cwd, stdout and stderr (file descriptors over a Unix
socket); each call then runs in a fresh ``fork()`` of that process, writes straight to the
caller's pipes and returns the CLI's exit status. State a call leaves in the client dies with its
child, as it would with a new interpreter.

The server's state is a JSON file shared by the successive calls:

- ``kernels[<owner/slug>]``: a list of scripted versions, one consumed per ``SaveKernel`` (push):
  ``statuses`` (wire names of ``KernelWorkerStatus``, one per status call, the last repeated),
  ``failure`` (the failure message sent with ERROR), ``files`` (output name -> text) and ``log``
  (the session log text, as the server sends it);
- ``pushes``: every pushed ``{"slug", "version", "text"}``; ``requests``: every ``METHOD url``;
- ``first_version``: the ``versionNumber`` answered to the first push (None: no version number);
- ``models`` (Kaggle Models, see :func:`new_model_state`): ``{"owner/model": {"<framework>/<variation>":
  latest version}}``, grown by ``CreateModel``/``CreateModelInstance``/``CreateModelInstanceVersion``;
  ``model_calls``: each of those calls as ``{"call", "body"}`` (the JSON the client sent); ``uploads``:
  each uploaded blob as ``{"name", "entries"}`` (a zip's member names) or ``{"name", "size"}``;
- ``competition`` (see :func:`new_competition_state`): the submission limits, the scripted scoring of each
  submission to come and what the client submitted.

Output files are listed with download URLs under ``https://storage.invalid/``; the client fetches
them with ``requests.get(url, stream=True)``, which also ends in ``Session.send``, so the downloads
go through the same patch (no lower layer is needed).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["FakeServer", "install", "new_state", "new_model_state", "new_competition_state", "read_state", "kaggle_log",
           "CliServer", "fake_kaggle_env", "make_project", "FakeClock"]

# The Kaggle Models calls the fake answers (kagglesdk ModelApiService method names).
MODEL_CALLS = ("GetModel", "GetModelInstance", "CreateModel", "CreateModelInstance", "CreateModelInstanceVersion")

# The competition calls the fake answers (kagglesdk CompetitionApiService method names).
COMPETITION_CALLS = ("GetSubmissionLimits", "StartSubmissionUpload", "CreateSubmission", "CreateCodeSubmission",
                     "ListSubmissions", "GetSubmission")

# -S: the wrapper needs only the standard library, and skipping site keeps each call at ~20 ms.
WRAPPER = '''#!{python} -S
"""`kaggle ARGS`: run the real kaggle CLI in a fork of the kaggle_fake server at {sock}."""
import json, os, socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect({sock!r})
socket.send_fds(conn, [json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}).encode()], [1, 2])
reply = conn.recv(16)
sys.exit(int(reply) if reply else 1)
'''


def new_state(kernel_id: str, versions: List[Dict], first_version: Optional[int] = 1,
              dataset_exists: bool = False, pushed: int = 0) -> Dict:
    """A server state; ``pushed`` versions count as already pushed (their statuses are next)."""
    return {"kernels": {kernel_id: versions}, "first_version": first_version, "dataset_exists": dataset_exists,
            "pushes": [{"slug": kernel_id, "version": None, "text": ""}] * pushed, "requests": []}


def new_model_state(models: Optional[Dict[str, Dict[str, int]]] = None) -> Dict:
    """A server state for Kaggle Models: ``models`` maps "owner/model" to its existing variations,
    ``{"<framework>/<variation>": latest version}``, the framework as Kaggle's URLs spell it (``pyTorch``)."""
    return {**new_state("nobody/no-kernel", []), "models": models or {}, "model_calls": [], "uploads": []}


def read_state(path: Path) -> Dict:
    return json.loads(Path(path).read_text())


def kaggle_log(lines: List[str], stream: str = "stdout") -> str:
    """A session log as Kaggle serves it: a JSON array, one ``{stream_name, time, data}`` record a line."""
    records = [json.dumps({"stream_name": stream, "time": 0.5 * i, "data": line + "\n"}) for i, line in
               enumerate(lines)]
    return "[" + "\n,".join(records) + "]"


class FakeServer:
    """Answers the client's requests from (and records them into) the JSON state file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def send(self, request) -> "requests.Response":
        state = read_state(self.path)
        url = request.url
        state["requests"].append(f"{request.method} {url}")
        body = request.body.read() if hasattr(request.body, "read") else request.body
        body = body.encode() if isinstance(body, str) else body
        status, payload = self._answer(state, url, body or b"")
        self.path.write_text(json.dumps(state))
        return _response(request, status, payload)

    def _answer(self, state: Dict, url: str, body: bytes):
        name = url.rsplit("/", 1)[-1]
        if url.startswith("https://storage.invalid/"):
            slug, version, rel = url.split("/", 5)[3:]  # https://storage.invalid/<slug>/<version>/<file>
            spec = self._versions(state, slug)[int(version) - 1]
            return 200, spec["files"][rel].encode()
        if url.startswith("https://upload.invalid/submission/"):  # a submission file (StartSubmissionUpload)
            if state["competition"].get("refuse") == "upload":
                return 403, {"code": 403, "message": "upload refused"}
            state["competition"]["blobs"][url.rsplit("/", 1)[-1]] = body.decode("utf-8", "replace")
            return 200, {}
        if url.startswith("https://upload.invalid/"):
            if "uploads" in state:
                state["uploads"].append(_upload_record(url.rsplit("/", 1)[-1], body))
            return 200, {}
        if name in MODEL_CALLS:
            return self._model(state, name, json.loads(body or b"{}"))
        if name in COMPETITION_CALLS:
            return _competition(state, name, json.loads(body or b"{}"))
        if name == "GetDatasetStatus":
            return (200, {"status": "ready"}) if state["dataset_exists"] else (404, {"message": "not found"})
        if name == "StartBlobUpload":
            blob = json.loads(body)["name"]
            return 200, {"token": f"tok-{blob}", "createUrl": f"https://upload.invalid/{blob}"}
        if name in ("CreateDataset", "CreateDatasetVersion"):
            state["dataset_exists"] = True
            return 200, {"ref": "alice/kernel-code", "url": "https://www.kaggle.com/datasets/alice/kernel-code",
                         "status": "ok"}
        if name == "SaveKernel":
            return 200, self._push(state, json.loads(body))
        req = json.loads(body or b"{}")
        kernel_id = f"{req.get('userName')}/{req.get('kernelSlug')}"
        pushed = [p for p in state["pushes"] if p["slug"] == kernel_id]
        if kernel_id not in state["kernels"] or not pushed:
            return 404, {"code": 404, "message": f"kernel {kernel_id} not found"}
        n = len(pushed)
        spec = state["kernels"][kernel_id][n - 1]
        if name == "GetKernelSessionStatus":
            now = spec["statuses"].pop(0) if len(spec["statuses"]) > 1 else spec["statuses"][0]
            return 200, {"status": now, **({"failureMessage": spec["failure"]} if spec.get("failure") and
                                           now == "ERROR" else {})}
        if name == "ListKernelSessionOutput":
            slug = req["kernelSlug"]
            files = [{"fileName": f, "url": f"https://storage.invalid/{slug}/{n}/{f}"} for f in spec["files"]]
            return 200, {"files": files, "log": spec.get("log", "")}
        return 404, {"code": 404, "message": f"the fake has no {name}"}

    @staticmethod
    def _model(state: Dict, name: str, req: Dict):
        """The Models endpoints over ``state["models"]``: 404 for what does not exist, as Kaggle answers."""
        models = state.setdefault("models", {})
        ref = f"{req.get('ownerSlug')}/{req.get('modelSlug', req.get('slug'))}"
        url = f"https://www.kaggle.com/models/{ref}"
        if name != "GetModel" and name != "GetModelInstance":
            state.setdefault("model_calls", []).append({"call": name, "body": req})
        if name == "CreateModel":
            if ref in models:
                return 409, {"code": 409, "message": f"model {ref} already exists"}
            models[ref] = {}
            return 200, {"id": len(models), "ref": ref, "url": url}
        if ref not in models:
            return 404, {"code": 404, "message": f"model {ref} not found"}
        if name == "GetModel":
            return 200, {"id": 1, "ref": ref, "title": req.get("modelSlug"), "url": url}
        inner = req.get("body", {}) if name == "CreateModelInstance" else req
        key = f"{_framework(inner.get('framework', ''))}/{inner.get('instanceSlug')}"
        variations = models[ref]
        if name == "CreateModelInstance":
            if key in variations:
                return 409, {"code": 409, "message": f"variation {key} of {ref} already exists"}
            variations[key] = 1
            return 200, {"id": 100 + len(variations), "ref": f"{ref}/{key}", "url": f"{url}/{key}"}
        if key not in variations:
            return 404, {"code": 404, "message": f"variation {key} of {ref} not found"}
        if name == "GetModelInstance":
            return 200, {"id": 7, "slug": inner.get("instanceSlug"), "versionNumber": variations[key],
                         "url": f"{url}/{key}"}
        variations[key] += 1  # CreateModelInstanceVersion
        return 200, {"id": 1000 + variations[key], "ref": f"{ref}/{key}", "url": f"{url}/{key}/{variations[key]}"}

    @staticmethod
    def _versions(state: Dict, slug: str) -> List[Dict]:
        return next(v for k, v in state["kernels"].items() if k.split("/")[1] == slug)

    @staticmethod
    def _push(state: Dict, sent: Dict) -> Dict:
        count = sum(p["slug"] == sent["slug"] for p in state["pushes"]) + 1
        first = state["first_version"]
        version = None if first is None else first + count - 1
        state["pushes"].append({"slug": sent["slug"], "version": version, "text": sent["text"]})
        reply = {"ref": f"/code/{sent['slug']}", "url": f"https://www.kaggle.com/code/{sent['slug']}"}
        return {**reply, "versionNumber": version} if version is not None else reply


def new_competition_state(competition: str, scripted: List[Dict], limits: Optional[Dict] = None,
                          base: Optional[Dict] = None) -> Dict:
    """A server state with one competition (added to ``base``, e.g. a :func:`new_state` with kernel versions).

    ``scripted``: one spec per submission to come, consumed by each ``CreateSubmission``/``CreateCodeSubmission``:
    ``statuses`` (``SubmissionStatus`` wire names, one per listing, the last repeated), ``public``/``private``
    (the scores, strings as Kaggle sends them, or None), ``error`` (the error description sent with ERROR).
    ``limits`` is the ``GetSubmissionLimits`` answer (default: 5 left today). The state records
    ``competition.submissions`` (what the client sent: ``competition``, ``description``, ``fileName``, ``content``
    of an uploaded file, ``kernel``, ``version``) and ``competition.calls`` (each call's name). Setting
    ``competition.refuse`` to ``"submit"`` answers the submit calls 404, as Kaggle does for a competition closed to
    submissions; ``"upload"`` answers the file's upload 403.
    """
    return {**(base or new_state("nobody/no-kernel", [])),
            "competition": {"name": competition, "scripted": scripted, "submissions": [], "blobs": {}, "calls": [],
                            "limits": {"numToday": 0, "numTotal": 3, "numAllowedNow": 5} if limits is None
                            else limits}}


def _competition(state: Dict, name: str, req: Dict):
    """The competitions endpoints over ``state["competition"]``; a listing advances every submission one status."""
    comp = state["competition"]
    comp["calls"].append(name)
    if req.get("competitionName", comp["name"]) != comp["name"]:
        return 404, {"code": 404, "message": f"competition {req.get('competitionName')} not found"}
    if name == "GetSubmissionLimits":
        return 200, {k: v for k, v in comp["limits"].items() if v}  # zeros are left out, as the server does
    if comp.get("refuse") == "submit" and name in ("StartSubmissionUpload", "CreateSubmission", "CreateCodeSubmission"):
        return 404, {"code": 404, "message": "competition not accepting submissions"}  # e.g. ended or not joined
    if name == "StartSubmissionUpload":
        token = f"blob-{len(comp['blobs']) + 1}-{req['fileName']}"
        return 200, {"token": token, "createUrl": f"https://upload.invalid/submission/{token}"}
    if name in ("CreateSubmission", "CreateCodeSubmission"):
        spec = comp["scripted"].pop(0)
        ref = 50000 + len(comp["submissions"]) + 1
        token = req.get("blobFileTokens")
        comp["submissions"].append({
            **spec, "ref": ref, "competition": req["competitionName"], "description": req.get("submissionDescription"),
            "fileName": req.get("fileName") or (token or "").split("-", 2)[-1],
            "content": comp["blobs"].get(token) if token else None,
            "kernel": f"{req['kernelOwner']}/{req['kernelSlug']}" if "kernelSlug" in req else None,
            "version": req.get("kernelVersion"), "date": f"2026-12-03T12:{len(comp['submissions']):02d}:00.000Z"})
        return 200, {"message": "Successfully submitted to " + comp["name"], "ref": ref}
    subs = comp["submissions"] if name == "ListSubmissions" else [
        s for s in comp["submissions"] if s["ref"] == req.get("ref")]
    wire = [_submission_wire(s) for s in subs]
    for s in subs:
        if len(s["statuses"]) > 1:
            s["statuses"].pop(0)
    if name == "GetSubmission":
        return (200, wire[0]) if wire else (404, {"code": 404, "message": "submission not found"})
    return 200, {"submissions": wire[::-1]}  # newest first, as sorted by date


def _submission_wire(s: Dict) -> Dict:
    """One ``ApiSubmission`` as JSON: the scores only once COMPLETE, the error description only with ERROR."""
    status = s["statuses"][0]
    wire = {"ref": s["ref"], "date": s["date"], "description": s["description"], "fileName": s["fileName"],
            "status": status, "totalBytes": len(s["content"] or "")}
    if status == "COMPLETE":
        wire.update({k: v for k, v in (("publicScore", s.get("public")), ("privateScore", s.get("private"))) if v})
    if status == "ERROR" and s.get("error"):
        wire["errorDescription"] = s["error"]
    return wire


def _framework(wire: str) -> str:
    """The framework as Kaggle's URLs spell it: ``MODEL_FRAMEWORK_PY_TORCH`` (the enum on the wire) -> ``pyTorch``."""
    first, *rest = wire.removeprefix("MODEL_FRAMEWORK_").lower().split("_")
    return first + "".join(w.capitalize() for w in rest)


def _upload_record(name: str, body: bytes) -> Dict:
    """What an uploaded blob held: a zip's member names (sorted), or the size of any other file."""
    import zipfile

    if body[:4] == b"PK\x03\x04":
        return {"name": name, "entries": sorted(zipfile.ZipFile(io.BytesIO(body)).namelist())}
    return {"name": name, "size": len(body)}


def _response(request, status: int, payload):
    import requests

    resp = requests.Response()
    resp.status_code, resp.url, resp.request = status, request.url, request
    if isinstance(payload, bytes):
        resp._content = payload
        resp.headers["Content-Type"] = "application/octet-stream"
    else:
        resp._content = json.dumps(payload).encode()
        resp.headers["Content-Type"] = "application/json"
    resp.headers["Content-Length"] = str(len(resp._content))
    resp.raw = io.BytesIO(resp._content)  # a streamed read (kaggle 2.2.5's download_file) gets the same bytes
    return resp


def install(path: Optional[str] = None) -> None:
    """Patch ``requests.Session.send`` in this process (the fork server does, before importing kaggle)."""
    import requests

    server = FakeServer(Path(path or os.environ["FAKE_KAGGLE_STATE"]))
    requests.Session.send = lambda self, request, **kwargs: server.send(request)


def _run_cli(request: Dict, fds: List[int]) -> None:
    """In the forked child: take over the caller's stdout/stderr and cwd, run the CLI, exit with its status."""
    code = 1
    try:
        for target, fd in zip((1, 2), fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        sys.argv = ["kaggle", *request["argv"]]
        from kaggle.cli import main

        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # an uncaught error: a traceback and exit 1, as from the real command
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(sock_path: str) -> None:
    """The fork server: patch the network, import the client once, then one forked child per call."""
    install()
    import kaggle.cli  # noqa: F401  (authenticates from the environment, as the CLI does)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    while True:
        conn, _ = listener.accept()
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                _run_cli(json.loads(message), fds)
            for fd in fds:
                os.close(fd)
            _, status = os.waitpid(pid, 0)
            conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())


class CliServer:
    """The fork server process and the wrapper script that talks to it (``stop()`` ends both)."""

    def __init__(self, folder: Path, timeout: float = 60.0):
        self.dir = Path(tempfile.mkdtemp(prefix="kf-", dir="/tmp"))  # a Unix socket path must stay short
        sock = str(self.dir / "s")
        self.log = folder / "cli-server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, "serve", sock], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the kaggle fork server did not start: {self.log.read_text()}")
            time.sleep(0.05)
        self.cli = folder / "kaggle"
        self.cli.write_text(WRAPPER.format(python=sys.executable, sock=sock))
        self.cli.chmod(0o755)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def fake_kaggle_env(tmp_path: Path, monkeypatch, state: Dict) -> Path:
    """Write the server state and set offline credentials for the CLI; the state file's path.

    Key-pair credentials and no ``KAGGLE_API_TOKEN``/``access_token`` file: either of those makes
    the client check the token over the network. HOME and TMPDIR move into ``tmp_path``. Set this
    before starting :class:`CliServer` (it reads the environment once).
    """
    state_path = tmp_path / "kaggle-state.json"
    state_path.write_text(json.dumps(state))
    for sub in ("kaggle-config", "tmpdir", "home"):
        (tmp_path / sub).mkdir(exist_ok=True)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    env = dict(FAKE_KAGGLE_STATE=str(state_path), KAGGLE_USERNAME="alice", KAGGLE_KEY="0" * 32,
               KAGGLE_CONFIG_DIR=str(tmp_path / "kaggle-config"), TMPDIR=str(tmp_path / "tmpdir"),
               HOME=str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return state_path


def make_project(dst: Path, owner: str = "alice") -> Path:
    """A copy of the project's build inputs with the owner filled in."""
    from kernel.packer import PLACEHOLDER_OWNER

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "kernel", dst / "kernel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("kernel-metadata.json", "dataset-metadata.json"):
        (dst / name).write_text((ROOT / name).read_text().replace(PLACEHOLDER_OWNER, owner))
    return dst


class FakeClock:
    """``clock()`` reads the time that ``sleep(s)`` advanced; ``sleeps`` records every pause."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])


@pytest.fixture()
def fake_kaggle(tmp_path, monkeypatch):
    """A fixture (import it into the test module). ``start(state) -> state file``: the real CLI on a scripted server, as ``$KERNEL_KAGGLE_CLI``."""
    servers = []

    def start(state: Dict) -> Path:
        state_path = fake_kaggle_env(tmp_path, monkeypatch, state)
        servers.append(CliServer(tmp_path))
        monkeypatch.setenv("KERNEL_KAGGLE_CLI", str(servers[-1].cli))
        return state_path

    yield start
    for server in servers:
        server.stop()
