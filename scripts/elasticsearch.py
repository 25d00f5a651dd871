"""A real single-node Elasticsearch on loopback, for the tests and CI.

    python scripts/elasticsearch.py start [--port N] [--timeout S]   # prints only the URL
    python scripts/elasticsearch.py status    # exit 0 when one is running, 1 when not
    python scripts/elasticsearch.py url       # the running one's URL
    python scripts/elasticsearch.py stop

It runs the minimal server distribution, ``org.elasticsearch.distribution.integ-test-zip:
elasticsearch:<VERSION>:zip``, fetched from Maven Central with Maven. ``VERSION`` is 8.19.21: the
newest of that artifact on Maven Central (its maven-metadata.xml lists 5.1.1 to 8.19.21; no 9.x
integ-test-zip is published, so 9.3.0 does not resolve), and 8.x runs on the Java 17 every machine
here has. The distribution has four modules (apm, transport-netty4, x-pack-core, x-pack-security):
no painless, no reindex, no analysis-common, no RRF, no ``GET /``; docs/elasticsearch-test-server.md
lists what that means for our code.

Everything it downloads and unpacks lives in a cache outside the repository (the licence is not
ours to ship): ``$RAG_ES_CACHE``, else ``/var/cache/knative-rag/elasticsearch`` for root (root's
home is private, and the server's user must read the distribution), else
``${XDG_CACHE_HOME:-~/.cache}/knative-rag/elasticsearch``. Maven's repository (the zip) is
``<cache>/m2``, the unpacked distribution ``<cache>/<VERSION>/``, the running server's state
``<cache>/server.json``. Java: ``$ES_JAVA_HOME``, else ``$JAVA_HOME``, else the ``java`` on PATH.

Elasticsearch refuses to run as root, so root runs it as the system user ``knative-rag-es``
(created when missing) through setpriv; anyone else runs it as themselves. Each start gets a fresh
folder (config, data, logs) under the system's temp folder, which ``stop`` removes. Progress and
timings go to stderr, so that ``export RAG_TEST_ES_URL=$(python3 scripts/elasticsearch.py start)``
works. Exit status: 0 done, 1 failed, 3 unavailable here (no Java, no Maven, or the download
failed): a caller may skip on 3. Linux only: it tells its processes by /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

VERSION = "8.19.21"
ARTIFACT = f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{VERSION}:zip"
SERVICE_USER = "knative-rag-es"
EXIT_UNAVAILABLE = 3
# No hsperfdata: it would leave /tmp/hsperfdata_<user> behind.
JAVA_OPTS = "-Xms512m -Xmx512m -XX:-UsePerfData"
SETTINGS = {
    "cluster.name": "knative-rag-test",
    "node.name": "knative-rag-test",
    "discovery.type": "single-node",
    "network.host": "127.0.0.1",
    "xpack.security.enabled": "false",
    "xpack.ml.enabled": "false",
    # CI disks are small and often past the 85/90/95 % watermarks; that must not block shards.
    "cluster.routing.allocation.disk.threshold_enabled": "false",
}


class Unavailable(Exception):
    """This machine lacks what the server needs (Java, Maven, or the download)."""


def cache_root() -> Path:
    """The folder that holds the distribution and the running server's state."""
    if override := os.environ.get("RAG_ES_CACHE"):
        return Path(override).absolute()
    if os.geteuid() == 0:
        return Path("/var/cache/knative-rag/elasticsearch")
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "knative-rag/elasticsearch"
    )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _java_home() -> Path:
    for name in ("ES_JAVA_HOME", "JAVA_HOME"):
        if value := os.environ.get(name):
            return Path(value)
    java = shutil.which("java")
    if java is None:
        raise Unavailable("no Java: set ES_JAVA_HOME or put java on PATH")
    return Path(java).resolve().parent.parent


def _zip_path(cache: Path) -> Path:
    group, artifact = ARTIFACT.split(":")[:2]
    folder = cache / "m2" / group.replace(".", "/") / artifact / VERSION
    return folder / f"{artifact}-{VERSION}.zip"


def distribution(cache: Path) -> Path:
    """The unpacked distribution's home, downloading and unpacking it on first use."""
    home = cache / VERSION / f"elasticsearch-{VERSION}"
    if (home / "bin" / "elasticsearch").exists():
        return home
    archive = _zip_path(cache)
    if not archive.exists():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise Unavailable("no Maven (mvn) to fetch the distribution")
        _log(f"downloading {ARTIFACT} with Maven into {cache / 'm2'}")
        began = time.monotonic()
        goal = ["dependency:get", "-Dtransitive=false", f"-Dartifact={ARTIFACT}"]
        done = subprocess.run(
            [mvn, "-B", "-q", *goal, f"-Dmaven.repo.local={cache / 'm2'}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not archive.exists():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise Unavailable(f"Maven could not fetch {ARTIFACT}:\n{tail}")
        _log(f"downloaded in {time.monotonic() - began:.1f} s")
    began = time.monotonic()
    _unpack(archive, home)
    _log(f"unpacked in {time.monotonic() - began:.1f} s")
    return home


def _unpack(archive: Path, home: Path) -> None:
    """Unpack next to ``home`` and rename, so that a half-unpacked tree is never used; modes are
    set explicitly (zipfile drops them, and the server's user must read everything)."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=home.parent.parent))
    try:
        with zipfile.ZipFile(archive) as bundle:
            for entry in bundle.infolist():
                target = Path(bundle.extract(entry, staging))
                executable = (entry.external_attr >> 16) & 0o111
                target.chmod(0o755 if entry.is_dir() or executable else 0o644)
        home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        (staging / home.name).rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _service_user() -> pwd.struct_passwd | None:
    """Root's stand-in (created when missing); None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        options = "--system --user-group --no-create-home --home-dir /nonexistent"
        subprocess.run(
            ["useradd", *options.split(), "--shell", "/usr/sbin/nologin", SERVICE_USER], check=True
        )
        return pwd.getpwnam(SERVICE_USER)


def _as_user(user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return ["runuser", "-u", user.pw_name, "--"]


def _read_state(cache: Path) -> dict[str, str | int] | None:
    try:
        state: dict[str, str | int] = json.loads((cache / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return state


def _ours(pid: int, cache: Path) -> bool:
    """Whether ``pid`` is a live process running this cache's distribution: not a zombie, and not
    another program that got the pid after a reboot."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and os.fsencode(cache) in command


def running(cache: Path) -> dict[str, str | int] | None:
    """The running server's state, or None."""
    state = _read_state(cache)
    return state if state is not None and _ours(int(state["pid"]), cache) else None


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _green(url: str) -> bool:
    request = f"{url}/_cluster/health?wait_for_status=green&timeout=1s"
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(json.load(response)["status"] == "green")
    except (OSError, ValueError, KeyError):
        return False


def _tail(path: Path, lines: int = 40) -> str:
    """The log's last lines, less Java stack frames (they would push the cause out)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    kept = [line for line in text if not line.lstrip().startswith(("at ", "... "))]
    return "\n".join(kept[-lines:])


def start(cache: Path, port: int | None = None, timeout_s: float = 120.0) -> str:
    """Start a server (or find the running one) and return its URL once the cluster is green."""
    with _locked(cache):
        if state := running(cache):
            _log(f"already running (pid {state['pid']})")
            return str(state["url"])
        _stop_locked(cache)  # a stale state file: remove what it left
        home = distribution(cache)
        java_home = _java_home()
        if not (java_home / "bin" / "java").exists():
            raise Unavailable(f"no java in {java_home}")
        user = _service_user()
        launcher = home / "bin" / "elasticsearch"
        if user is not None:
            probe = subprocess.run([*_as_user(user), "test", "-x", str(launcher)], check=False)
            if probe.returncode != 0:
                raise RuntimeError(f"{SERVICE_USER} cannot run {launcher}: make {cache} readable")
        workdir = Path(tempfile.mkdtemp(prefix="knative-rag-es-"))
        shutil.copytree(home / "config", workdir / "config")
        for folder in ("data", "logs", "tmp"):
            (workdir / folder).mkdir()
        http_port = port or _free_port()
        settings = {
            **SETTINGS,
            "http.port": str(http_port),
            "transport.port": str(_free_port()),
            "path.data": str(workdir / "data"),
            "path.logs": str(workdir / "logs"),
        }
        (workdir / "config" / "elasticsearch.yml").write_text(
            "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())
        )
        if user is not None:
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("JAVA_HOME",)},
            "ES_JAVA_HOME": str(java_home),
            "ES_JAVA_OPTS": JAVA_OPTS,
            "CLI_JAVA_OPTS": "-XX:-UsePerfData",  # the launcher's JVM
            "ES_PATH_CONF": str(workdir / "config"),
            "ES_TMPDIR": str(workdir / "tmp"),
            "HOME": str(workdir),
        }
        console = workdir / "console.log"
        began = time.monotonic()
        with console.open("wb") as output:
            process = subprocess.Popen(
                [*_as_user(user), str(launcher)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{http_port}"
        state = {"pid": process.pid, "port": http_port, "url": url, "workdir": str(workdir)}
        (cache / "server.json").write_text(json.dumps(state, indent=2) + "\n")
        while not _green(url):
            if process.poll() is not None or time.monotonic() - began > timeout_s:
                why = "exited" if process.returncode is not None else f"not green in {timeout_s} s"
                log = _tail(console)
                _stop_locked(cache)
                raise RuntimeError(f"Elasticsearch {why}; the last lines of its log:\n{log}")
            time.sleep(0.5)
        process.returncode = 0  # it outlives this handle on purpose; stop() ends it by pid
        _log(f"green in {time.monotonic() - began:.1f} s at {url} (pid {process.pid})")
        return url


def stop(cache: Path, grace_s: float = 30.0) -> None:
    """Stop the running server (SIGTERM, then SIGKILL after ``grace_s``) and remove its folder."""
    with _locked(cache):
        _stop_locked(cache, grace_s)


def _group(pgid: int, cache: Path) -> list[int]:
    """The live processes of process group ``pgid`` that run this cache's distribution."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(stat.parent.name)
            if int(stat.read_text().rpartition(")")[2].split()[2]) == pgid and _ours(pid, cache):
                members.append(pid)
    return members


def _stop_locked(cache: Path, grace_s: float = 30.0) -> None:
    state = _read_state(cache)
    if state is None:
        return
    pid = int(state["pid"])  # the launcher, leader of a process group with the server JVM
    deadline = time.monotonic() + grace_s
    if _ours(pid, cache):
        os.kill(pid, signal.SIGTERM)  # the launcher passes it on to the server JVM
    while _ours(pid, cache) or _group(pid, cache):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
    shutil.rmtree(str(state["workdir"]), ignore_errors=True)
    (cache / "server.json").unlink(missing_ok=True)
    _log(f"stopped (pid {pid})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--port", type=int, help="HTTP port (start; default: a free one)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to reach green")
    args = parser.parse_args(argv)
    cache = cache_root()
    try:
        if args.command == "start":
            print(start(cache, args.port, args.timeout))
        elif args.command == "stop":
            stop(cache)
        elif state := running(cache):
            if args.command == "url":
                print(state["url"])
            else:
                print(f"running: pid {state['pid']}, {state['url']}, data in {state['workdir']}")
        else:
            _log("not running")
            return 1
    except Unavailable as exc:
        _log(f"unavailable: {exc}")
        return EXIT_UNAVAILABLE
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        _log(f"failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
