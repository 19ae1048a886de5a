"""Deployment files (docs/deployment.md): their wiring parsed, and what can run here run for real.

Parsed: the Dockerfile, mount-scripts/compose.yaml, mount-scripts/k8s/*.yaml, the launchd plist
(no Docker engine, cluster or macOS here). Run for real against the session server: the
container's entrypoint (detaching a dead mount first), the mount(8) helper with the argv
mount(8) gives it, the systemd unit's ExecStart stopped the way systemd stops it, the k8s
readiness probe's command, and ``hvfs mount /dev/fd/N`` on a mount this test makes itself, served
also by an unprivileged process through mount-scripts/fuse-fd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import plistlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import is_mounted, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "mount-scripts"
FLEET = ROOT / "examples" / "fleet.yml"
HVFS = Path(sys.executable).parent / "hvfs"  # the venv's console script
MNT = "/mnt/fleet"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _need_fuse() -> None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("/dev/fuse is not available")


def _env(**extra: str) -> dict[str, str]:
    """This environment without NATS or hvfs settings, the venv's bin first, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "HVFS_"))}
    env["PATH"] = f"{HVFS.parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _answers(path: Path) -> dict[str, Any] | None:
    """The mount's .hvfs/status, read by a bounded ``cat`` (a wedged mount must not hang the test)."""
    r = subprocess.run(["timeout", "2", "cat", str(path / ".hvfs" / "status")], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def _dead(path: Path) -> bool:
    r = subprocess.run(["timeout", "2", "stat", str(path)], capture_output=True, text=True)
    return r.returncode != 0 and "not connected" in r.stderr


def _fuse_mount(path: Path) -> int:
    """What a privileged helper does: open /dev/fuse and mount(2) it; nobody serves it yet."""
    fd = os.open("/dev/fuse", os.O_RDWR)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if _libc.mount(b"hvfs", os.fsencode(path), b"fuse.hvfs", 0, opts) != 0:
        e = ctypes.get_errno()
        os.close(fd)
        raise OSError(e, f"mount(2) of {path}: {os.strerror(e)}")
    return fd


def _stop(proc: subprocess.Popen[Any], timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"pid {proc.pid} still running {timeout}s after SIGTERM") from None


def _cleanup(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", str(path)], check=False)
    if is_mounted(path):
        _libc.umount2(os.fsencode(path), 2)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    _need_fuse()
    p = tmp_path / "fleet"
    p.mkdir()
    yield p
    _cleanup(p)


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


# -- Dockerfile ------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_installs_with_setup_sh_and_mounts_by_entrypoint() -> None:
    ins = _dockerfile()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    for f in froms:
        image = f.split()[0]
        assert ":" in image and not image.endswith(":latest"), f"base image not pinned: {image}"
    assert any(i == "RUN" and "bash scripts/setup.sh" in a for i, a in ins), "the README's install steps"
    assert ("STOPSIGNAL", "SIGTERM") in ins
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert "hvfs status" in health and "timeout" in health
    entry = json.loads(next(a for i, a in ins if i == "ENTRYPOINT"))
    assert entry == ["/opt/hvfs/mount-scripts/entrypoint.sh"]
    assert os.access(SCRIPTS / "entrypoint.sh", os.X_OK)
    assert ("ENV", "PATH=/opt/hvfs/.venv/bin:$PATH HVFS_MOUNT=/mnt/fleet") in ins
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.parametrize("script", ["entrypoint.sh", "mount.fuse.hvfs"])
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["sh", "-n", str(SCRIPTS / script)], check=True)


def test_entrypoint_detaches_a_dead_mount_and_mounts_from_env(server: Any, mountpoint: Path,
                                                              tmp_path: Path) -> None:
    os.close(_fuse_mount(mountpoint))  # what a killed daemon leaves: a mount nobody serves
    assert _dead(mountpoint)
    log = tmp_path / "entrypoint.log"
    env = _env(HVFS_MOUNT=str(mountpoint), NATS_URL=server.url, HVFS_WRITER="ep-1",
               HVFS_CONFIG=str(FLEET))
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(SCRIPTS / "entrypoint.sh"), "--log-level", "INFO"], env=env,
                                stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    try:
        status = wait_for(lambda: proc.poll() is None and _answers(mountpoint), 30,
                          f"the entrypoint's mount ({_log(log)})")
        assert status["connected"] and status["writer"] == "ep-1"  # HVFS_WRITER
        assert (mountpoint / "agents").is_dir()  # HVFS_CONFIG: examples/fleet.yml
        assert "detaching the dead mount" in log.read_text()
        assert _stop(proc) == 0  # exec'd: hvfs itself got the SIGTERM
        assert not is_mounted(mountpoint)
    finally:
        if proc.poll() is None:
            proc.kill()


# -- compose ---------------------------------------------------------------------------------------


def _binds(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in service.get("volumes", []) if isinstance(v, dict) and v.get("type") == "bind"]


def _recipe_lines() -> set[str]:
    doc = (ROOT / "docs" / "recipes.md").read_text()
    return {line.strip() for block in re.findall(r"```sh\n(.*?)```", doc, re.S) for line in block.splitlines()}


def test_compose_shares_the_mount_from_sidecar_to_agent() -> None:
    c = yaml.safe_load((SCRIPTS / "compose.yaml").read_text())
    s = c["services"]
    nats, hvfs, agent = s["nats"], s["hvfs"], s["agent"]
    assert "-js" in nats["entrypoint"] or "-js" in nats.get("command", [])
    assert hvfs["environment"]["NATS_URL"] == "nats://nats:4222"
    assert hvfs["environment"]["HVFS_MOUNT"] == MNT
    assert "/dev/fuse:/dev/fuse" in hvfs["devices"]
    assert "SYS_ADMIN" in hvfs["cap_add"]
    assert "apparmor:unconfined" in hvfs["security_opt"]
    (hb,), (ab,) = _binds(hvfs), _binds(agent)
    assert hb["source"] == ab["source"] and hb["target"] == ab["target"] == MNT
    assert hb["bind"]["propagation"] == "rshared"
    assert ab["bind"]["propagation"] == "rslave"
    assert "devices" not in agent and "cap_add" not in agent  # the agent needs no privilege
    assert agent["depends_on"]["hvfs"]["condition"] == "service_healthy"
    assert agent["working_dir"] == MNT
    script = agent["command"][-1].strip().splitlines()
    assert script[0] in _recipe_lines(), "the agent runs a line of docs/recipes.md"


# -- Kubernetes ------------------------------------------------------------------------------------


def _pod(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((SCRIPTS / "k8s" / name).read_text())
    assert doc["kind"] == "Pod"
    return doc["spec"]


def _containers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def _fleet_mount(c: dict[str, Any]) -> dict[str, Any] | None:
    return next((m for m in c.get("volumeMounts", []) if m["name"] == "fleet"), None)


def _probe_script(probe: dict[str, Any]) -> str:
    return " ".join(probe["exec"]["command"])


def _check_mount_wiring(spec: dict[str, Any], server_name: str) -> None:
    cs = _containers(spec)
    assert {v["name"] for v in spec["volumes"]} >= {"fleet"}
    paths = {m["mountPath"] for c in cs.values() if (m := _fleet_mount(c))}
    assert paths == {MNT}, "one mount path in every container"
    for c in cs.values():
        m = _fleet_mount(c)
        if m and m.get("mountPropagation") == "Bidirectional":
            assert c["securityContext"]["privileged"] is True, f"{c['name']}: Bidirectional needs privileged"
    assert _fleet_mount(cs[server_name])["mountPropagation"] == "Bidirectional"  # type: ignore[index]
    assert _fleet_mount(cs["app"])["mountPropagation"] == "HostToContainer"  # type: ignore[index]
    assert "privileged" not in cs["app"].get("securityContext", {})
    stop = " ".join(cs[server_name]["lifecycle"]["preStop"]["exec"]["command"])
    assert f"fusermount3 -u {MNT}" in stop


def _check_probe(probe: dict[str, Any]) -> None:
    script = _probe_script(probe)
    assert "/proc/mounts" in script and f"timeout 2 stat {MNT}" in script


def test_k8s_sidecar() -> None:
    spec = _pod("pod-sidecar.yaml")
    _check_mount_wiring(spec, "hvfs")
    hvfs = _containers(spec)["hvfs"]
    _check_probe(hvfs["readinessProbe"])
    assert {"name": "HVFS_MOUNT", "value": MNT} in hvfs["env"]


def test_k8s_native_sidecar() -> None:
    spec = _pod("pod-native-sidecar.yaml")
    _check_mount_wiring(spec, "hvfs")
    (init,) = spec["initContainers"]
    assert init["name"] == "hvfs" and init["restartPolicy"] == "Always"
    _check_probe(init["startupProbe"])  # what holds the app back until the mount answers
    _check_probe(init["readinessProbe"])


def test_k8s_fd_form_runs_hvfs_unprivileged() -> None:
    spec = _pod("pod-fd.yaml")
    _check_mount_wiring(spec, "fuse-mounter")
    cs = _containers(spec)
    hvfs = cs["hvfs"]
    assert _fleet_mount(hvfs) is None, "hvfs serves the descriptor; it needs no view of the mount"
    sc = hvfs["securityContext"]
    assert sc["runAsNonRoot"] and sc["capabilities"]["drop"] == ["ALL"] and not sc["allowPrivilegeEscalation"]
    assert "/dev/fd/{fd}" in hvfs["command"] and "exec" in hvfs["command"]
    sock = cs["fuse-mounter"]["command"][cs["fuse-mounter"]["command"].index("serve") + 2]
    assert sock in hvfs["command"]
    _check_probe(cs["app"]["readinessProbe"])


def test_readiness_probe_passes_only_once_the_mount_answers(server: Any, mountpoint: Path,
                                                            tmp_path: Path) -> None:
    """The probe's own command, with /mnt/fleet replaced: a plain dir, a dead mount, a live one."""
    cmd = _containers(_pod("pod-sidecar.yaml"))["hvfs"]["readinessProbe"]["exec"]["command"]
    cmd = [a.replace(MNT, str(mountpoint)) for a in cmd]

    def probe() -> int:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode

    assert probe() != 0  # not mounted
    os.close(_fuse_mount(mountpoint))
    assert probe() != 0  # mounted but dead (ENOTCONN), answered at once
    _libc.umount2(os.fsencode(mountpoint), 2)
    log = tmp_path / "m.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(HVFS), "mount", str(mountpoint), "--server", server.url], env=_env(),
                                stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    try:
        wait_for(lambda: proc.poll() is None and probe() == 0, 30, f"the probe to pass ({_log(log)})")
    finally:
        assert _stop(proc) == 0


# -- hvfs mount /dev/fd/N --------------------------------------------------------------------------


def test_dev_fd_mountpoint(server: Any, mountpoint: Path, tmp_path: Path) -> None:
    """A mount made here by mount(2); hvfs serves its inherited descriptor as /dev/fd/N."""
    fd = _fuse_mount(mountpoint)
    log = tmp_path / "fd.log"
    try:
        with open(log, "wb") as f:
            proc = subprocess.Popen([str(HVFS), "mount", f"/dev/fd/{fd}", "--server", server.url],
                                    env=_env(), pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    finally:
        os.close(fd)  # else our copy keeps the connection up after hvfs is gone, and requests hang
    try:
        status = wait_for(lambda: proc.poll() is None and _answers(mountpoint), 30, f"the mount ({_log(log)})")
        assert status["connected"]
        ls = subprocess.run(["timeout", "2", "ls", str(mountpoint)], capture_output=True, text=True, check=True)
        assert ls.stdout.split() == ["kv", "obj", "streams"]
        assert "no kernel notifier" in log.read_text()
    finally:
        assert _stop(proc) == 0
    # libfuse does not unmount what it did not mount: the mount stays, served by nobody.
    assert is_mounted(mountpoint) and _dead(mountpoint)


def test_dev_fd_refused_when_not_fuse(tmp_path: Path) -> None:
    r = subprocess.run([str(HVFS), "mount", "/dev/fd/0", "--server", "nats://127.0.0.1:1"], env=_env(),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is not /dev/fuse" in r.stderr
    r = subprocess.run([str(HVFS), "mount", "/dev/fd/97", "--server", "nats://127.0.0.1:1"], env=_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is not open" in r.stderr


def test_fuse_fd_hands_the_mount_to_an_unprivileged_hvfs(server: Any, mountpoint: Path,
                                                         tmp_path: Path) -> None:
    """mount-scripts/fuse-fd serve (as root) + exec (as nobody, no capabilities): pod-fd.yaml here."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    sock = tmp_path / "fuse.sock"
    slog, hlog = tmp_path / "serve.log", tmp_path / "hvfs.log"
    with open(slog, "wb") as f:
        mounter = subprocess.Popen([sys.executable, str(SCRIPTS / "fuse-fd"), "serve", str(mountpoint), str(sock),
                                    "--allow-other"], stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
              "--bounding-set=-all"]

    def serve() -> subprocess.Popen[bytes]:
        with open(hlog, "ab") as f:
            return subprocess.Popen([sys.executable, str(SCRIPTS / "fuse-fd"), "exec", str(sock), "--", *nobody,
                                     str(HVFS), "mount", "/dev/fd/{fd}", "--server", server.url],
                                    env=_env(HOME="/nonexistent"), cwd="/", stdin=subprocess.DEVNULL, stdout=f, stderr=f)

    try:
        wait_for(sock.exists, 10, f"the mounter's socket ({_log(slog)})")
        for _ in range(2):  # the second: a restarted hvfs gets a fresh mount over the dead one
            proc = serve()
            try:
                wait_for(lambda: proc.poll() is None and _answers(mountpoint), 30, f"the mount ({_log(hlog)})")  # noqa: B023
            finally:
                assert _stop(proc) == 0
            assert _dead(mountpoint)
        assert _stop(mounter, 10) == 0
        assert not is_mounted(mountpoint)
    finally:
        if mounter.poll() is None:
            mounter.kill()


# -- mount(8) helper and fstab ---------------------------------------------------------------------


def test_mount_helper_as_mount8_calls_it(server: Any, mountpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "helper.log"
    # mount(8): /sbin/mount.fuse.hvfs SOURCE DIR [-sfnv] [-o OPTIONS]
    argv = [str(SCRIPTS / "mount.fuse.hvfs"), server.url, str(mountpoint), "-n", "-o",
            f"rw,_netdev,nofail,x-systemd.automount,config={FLEET},writer=fstab-1,log={log}"]
    r = subprocess.run(argv, env=_env(HVFS_BIN=str(HVFS)), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr + _log(log)
    pid = int(re.search(r"\(pid (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    try:
        status = _answers(mountpoint)  # the helper returned: the mount answers already
        assert status and status["connected"] and status["writer"] == "fstab-1"
        assert (mountpoint / "agents").is_dir()
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, "the daemon to exit after the unmount")
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


def test_mount_helper_failure_is_mount8_32(mountpoint: Path, tmp_path: Path) -> None:
    r = subprocess.run([str(SCRIPTS / "mount.fuse.hvfs"), "embedded", str(mountpoint), "-o",
                        f"config={tmp_path}/missing.yml"], env=_env(HVFS_BIN=str(HVFS)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 32 and "missing.yml" in r.stderr
    assert not is_mounted(mountpoint)


def test_fstab_line_in_the_docs() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    lines = [ln for ln in doc.splitlines() if " fuse.hvfs " in ln and not ln.lstrip().startswith(("#", "mount", "|"))]
    assert lines, "docs/deployment.md shows an fstab line"
    helper = (SCRIPTS / "mount.fuse.hvfs").read_text()
    for line in lines:
        source, target, fstype, options, dump, passno = line.split()
        assert fstype == "fuse.hvfs" and target.startswith("/")
        assert source == "embedded" or source.startswith(("nats://", "tls://"))
        assert dump == "0" and passno == "0"
        opts = options.split(",")
        assert "_netdev" in opts  # waits for the network at boot
        for o in opts:
            key = o.split("=")[0]
            if "=" in o:
                assert f"{key}=*)" in helper, f"the helper does not know {key}="


# -- systemd ---------------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> values in order (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", v)
    assert m, v
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_systemd_unit_starts_and_stops_like_systemd(server: Any, mountpoint: Path, tmp_path: Path) -> None:
    unit = _unit(SCRIPTS / "hvfs@.service")
    svc = unit["Service"]
    assert svc["Restart"] == ["on-failure"] and svc["KillSignal"] == ["SIGTERM"]
    assert svc["EnvironmentFile"] == ["/etc/hvfs/%i.env"]
    stop_timeout = _seconds(svc["TimeoutStopSec"][0])
    instance = "fleet"
    envfile = tmp_path / f"{instance}.env"  # what /etc/hvfs/fleet.env would hold
    envfile.write_text(f"HVFS_MOUNT={mountpoint}\nNATS_URL={server.url}\nHVFS_WRITER=unit-1\n"
                       f"HVFS_CONFIG={FLEET}\n")
    env: dict[str, str] = {}
    for line in svc["Environment"]:
        for word in shlex.split(line.replace("%i", instance)):
            k, _, v = word.partition("=")
            env[k] = v
    assert env["HVFS_MOUNT"] == f"/mnt/{instance}"  # the default, before the file overrides it
    for line in envfile.read_text().splitlines():
        k, _, v = line.partition("=")
        env[k] = v

    def command(line: str) -> list[str]:
        line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line.replace("%i", instance).lstrip("-"))
        argv = shlex.split(line)
        return [str(HVFS) if a == "/opt/hvfs/.venv/bin/hvfs" else a for a in argv]

    run_env = {"PATH": _env()["PATH"], "LANG": "C.UTF-8", **env}
    for pre in svc.get("ExecStartPre", []):
        subprocess.run(command(pre), env=run_env, check=not pre.startswith("-"))
    (start,) = svc["ExecStart"]
    assert command(start)[:3] == [str(HVFS), "mount", str(mountpoint)]
    log = tmp_path / "journal.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(command(start), env=run_env, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    try:
        status = wait_for(lambda: proc.poll() is None and _answers(mountpoint), 30, f"the unit's mount ({_log(log)})")
        assert status["writer"] == "unit-1"
        # systemctl stop: KillSignal to the main PID, SIGKILL after TimeoutStopSec
        proc.send_signal(getattr(signal, svc["KillSignal"][0]))
        assert proc.wait(stop_timeout) == 0
        assert not is_mounted(mountpoint), "unmounted by hvfs itself, before ExecStopPost"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    for post in svc["ExecStopPost"]:
        assert post.startswith("-") and "fusermount3 -uz" in post
        subprocess.run(command(post), env=run_env, capture_output=True)


# -- launchd ---------------------------------------------------------------------------------------


def test_launchd_plist_parses() -> None:
    """Not runnable here (macOS with FUSE-T): only its shape."""
    with open(SCRIPTS / "macos" / "com.hvfs.fleet.plist", "rb") as f:
        p = plistlib.load(f)
    assert p["ProgramArguments"][1:2] == ["mount"] and p["ProgramArguments"][0].endswith("/hvfs")
    assert p["KeepAlive"] == {"SuccessfulExit": False}
    assert "NATS_URL" in p["EnvironmentVariables"]
