"""``lamina build`` end to end: real Dockerfiles, real containers for RUN, the real store.

The builder is the same for every driver (it goes through the store and the launcher):
most tests run on overlay; the reproducibility test builds on two drivers and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LAMINA, needs_root

pytestmark = needs_root

BASE = "base/busybox:1"


class Site:
    def __init__(self, root: Path, driver: str, work: Path) -> None:
        self.root, self.driver, self.work = root, driver, work

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([*LAMINA, "--root", str(self.root), "--driver", self.driver,
                               *args], capture_output=True, input=input, timeout=300,
                              cwd=cwd)
        if check:
            assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        return proc

    def out(self, *args: str) -> str:
        return self(*args).stdout.decode()

    def context(self, name: str, dockerfile: str, files: dict[str, str] | None = None) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "Dockerfile").write_text(dockerfile)
        for rel, text in (files or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(text)
        return path

    def build(self, context: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self("build", "--network", "none", *args, str(context), check=check)

    def config(self, image: str) -> dict:
        return json.loads(self.out("inspect", image))[0]["Config"]

    def run(self, image: str, *command: str) -> str:
        return self.out("run", "--rm", "--network", "none", image, *command)


def _site(root: Path, driver: str, work: Path, busybox_tar: Path | None = None,
          archive: Path | None = None) -> Iterator[Site]:
    site = Site(root, driver, work)
    if archive is not None:
        site("load", "-i", str(archive))  # the very image another store has
    else:
        site("import", "-c", 'CMD ["sh"]', str(busybox_tar), BASE)
    yield site
    assert site.out("ps", "-a", "-q") == ""  # every RUN's container went


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("build")
    yield from _site(base / "store", "overlay", base / "work", busybox_tar)


def test_run_steps_metadata_and_history(site: Site) -> None:
    ctx = site.context("meta", f"""\
# syntax=docker/dockerfile:1
ARG BASE={BASE}
FROM $BASE AS first
ENV GREETING=hello \\
    WHO=world
WORKDIR /app
ARG FLAVOR=plain
RUN echo "$GREETING $WHO $FLAVOR" > greeting
RUN <<EOF
echo one > /app/heredoc
echo two >> /app/heredoc
EOF
RUN <<EOF
#!/bin/sh -e
echo "run as a program: $0" > /app/program
EOF
LABEL org.example.title="a title" other=1
EXPOSE 8080 53/udp
VOLUME /data
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --retries=3 CMD true
ONBUILD RUN echo child
USER 1000:1000
ENTRYPOINT ["cat"]
CMD ["/app/greeting"]
""")
    out = site.build(ctx, "-t", "meta:1").stdout.decode()
    assert "STEP 1/16: FROM $BASE AS first" in out and "Successfully tagged meta:1" in out
    assert site.run("meta:1") == "hello world plain\n"
    assert site.run("meta:1", "/app/heredoc") == "one\ntwo\n"
    assert site.run("meta:1", "/app/program") == "run as a program: /dev/.lamina-run-heredoc\n"
    config = site.config("meta:1")
    assert config["WorkingDir"] == "/app" and config["User"] == "1000:1000"
    assert "GREETING=hello" in config["Env"] and "WHO=world" in config["Env"]
    assert not any(e.startswith("FLAVOR=") for e in config["Env"])  # an ARG is not ENV
    assert config["Labels"] == {"org.example.title": "a title", "other": "1"}
    assert set(config["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert config["Volumes"] == {"/data": {}} and config["StopSignal"] == "SIGQUIT"
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]  # shell form, as Docker
    assert config["Healthcheck"]["Interval"] == 30 * 10**9
    assert config["OnBuild"] == ["RUN echo child"]
    assert config["Entrypoint"] == ["cat"] and config["Cmd"] == ["/app/greeting"]
    history = json.loads(site.out("history", "--format", "json", "meta:1"))
    made = [h for h in history if h["Size"] > 0 and "lamina build" in h["Comment"]]
    assert len(made) == 3  # the three RUNs; every other step is empty_layer
    image = json.loads(site.out("inspect", "meta:1"))[0]
    assert len(image["RootFS"]["Layers"]) == 4


def test_cache_hits_and_misses(site: Site) -> None:
    ctx = site.context("cache", f"""\
FROM {BASE}
ARG VERSION=1
RUN echo "$VERSION $(cat /proc/sys/kernel/random/uuid)" > /stamp
RUN cat /stamp > /copy
CMD ["cat", "/copy"]
""")
    first = site.build(ctx, "-t", "cache:1").stdout.decode()
    assert "CACHED" not in first
    stamp = site.run("cache:1")
    again = site.build(ctx, "-t", "cache:1").stdout.decode()
    assert again.count("--> CACHED") == 2
    assert site.run("cache:1") == stamp
    # a build arg the RUN sees: a miss from that step on
    changed = site.build(ctx, "-t", "cache:2", "--build-arg", "VERSION=2").stdout.decode()
    assert "CACHED" not in changed
    assert site.run("cache:2").startswith("2 ")
    # an argument nobody uses changes nothing; --no-cache makes every layer again
    site.build(ctx, "-t", "cache:3", "--build-arg", "VERSION=1")
    assert site.run("cache:3") == stamp
    fresh = site.build(ctx, "-t", "cache:4", "--no-cache").stdout.decode()
    assert "CACHED" not in fresh and site.run("cache:4") != stamp
    stamp = site.run("cache:4")  # the layers --no-cache made are the cache's now
    # an earlier step changed: the later one runs again
    (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text().replace(
        "RUN cat /stamp > /copy", "RUN cat /stamp > /copy && echo x >> /copy"))
    later = site.build(ctx, "-t", "cache:5").stdout.decode()
    assert later.count("--> CACHED") == 1 and site.run("cache:5") == stamp + "x\n"


def test_a_failing_run_shows_its_output_and_tags_nothing(site: Site) -> None:
    ctx = site.context("fail", f"""\
FROM {BASE}
RUN echo before
RUN echo the-output; exit 7
""")
    proc = site.build(ctx, "-t", "fail:1", check=False)
    assert proc.returncode == 1
    assert b"the-output" in proc.stdout
    assert b"returned a non-zero code: 7" in proc.stderr and b"Traceback" not in proc.stderr
    assert b"Dockerfile:3" in proc.stderr
    assert "fail:1" not in site.out("images")
    quiet = site.build(ctx, "-q", "-t", "fail:1", check=False)
    assert quiet.returncode == 1 and b"the-output" in quiet.stderr  # shown when it fails
    assert b"STEP" not in quiet.stdout


def test_syntax_errors_name_file_line_and_column(site: Site) -> None:
    ctx = site.context("syntax", f"FROM {BASE}\nRUN echo ok\nCOPPY a b\n")
    proc = site.build(ctx, check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "Dockerfile:3" in err and "COPPY" in err and "COPY" in err, err
    assert len(err.splitlines()) == 2 and "Traceback" not in err
    ctx = site.context("heredoc", f"FROM {BASE}\nRUN <<EOF\necho never ends\n")
    err = site.build(ctx, check=False).stderr.decode()
    assert "Dockerfile:2" in err and "EOF" in err
    ctx = site.context("remote", f"FROM {BASE}\nADD https://example.com/x /x\n")
    err = site.build(ctx, check=False).stderr.decode()
    assert "not supported" in err and "https://example.com/x" in err


def test_dockerfile_from_stdin_quiet_and_target(site: Site) -> None:
    ctx = site.context("stdin", "")
    text = f"""\
FROM {BASE} AS one
RUN echo one > /which
FROM {BASE} AS two
RUN echo two > /which
FROM two
RUN echo three >> /which
"""
    proc = site("build", "--network", "none", "-q", "-f", "-", "-t", "stdin:1", str(ctx),
                input=text.encode())
    image_id = proc.stdout.decode().strip()
    assert image_id.startswith("sha256:") and len(proc.stdout.splitlines()) == 1
    assert site.run("stdin:1", "cat", "/which") == "two\nthree\n"
    one = site("build", "--network", "none", "--target", "one", "-f", "-", "-t", "stdin:one",
               str(ctx), input=text.encode()).stdout.decode()
    assert "echo two" not in one  # a stage the target does not need is not built
    assert site.run("stdin:one", "cat", "/which") == "one\n"
    bad = site("build", "--target", "nine", "-f", "-", str(ctx), input=text.encode(),
               check=False)
    assert bad.returncode == 1 and b"no build stage named 'nine'" in bad.stderr


def test_onbuild_triggers_run_in_the_child_build(site: Site) -> None:
    parent = site.context("onbuild-parent", f"""\
FROM {BASE}
ONBUILD RUN echo triggered > /trigger
""")
    site.build(parent, "-t", "onbuild:parent")
    child = site.context("onbuild-child", "FROM onbuild:parent\nRUN cat /trigger\n")
    out = site.build(child, "-t", "onbuild:child").stdout.decode()
    assert "ONBUILD RUN echo triggered" in out
    assert site.run("onbuild:child", "cat", "/trigger") == "triggered\n"
    assert not site.config("onbuild:child").get("OnBuild")  # not inherited further


def test_reproducible_builds_give_one_digest(site: Site,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    text = f"""\
FROM {BASE}
ENV A=1
RUN mkdir -p /out && echo "$A" > /out/a && touch /out/b
CMD ["cat", "/out/a"]
"""
    ctx = site.context("repro", text)
    first = site.build(ctx, "-q", "--timestamp", "1700000000").stdout.decode().strip()
    second = site.build(ctx, "-q", "--no-cache", "--timestamp", "1700000000").stdout.decode()
    assert first == second.strip()
    other = tmp_path_factory.mktemp("repro-vfs")
    site("save", "-o", str(other / "base.tar"), BASE)
    for vfs in _site(other / "store", "vfs", other / "work", archive=other / "base.tar"):
        ctx2 = vfs.context("repro", text)
        third = vfs.build(ctx2, "-q", "--timestamp", "1700000000").stdout.decode().strip()
        assert third == first  # another driver, the same image
    later = site.build(ctx, "-q", "--no-cache", "--timestamp", "1800000000").stdout.decode()
    assert later.strip() != first


# -- COPY and ADD ----------------------------------------------------------------------------


def test_copy_add_dockerignore_chown_and_stages(site: Site) -> None:
    import io
    import tarfile

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"inside the archive\n"
        info = tarfile.TarInfo("pkg/readme")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ctx = site.context("copy", f"""\
FROM {BASE} AS build
RUN echo 'app:x:1234:1234:App:/home/app:/bin/sh' >> /etc/passwd && \\
    echo 'app:x:1234:' >> /etc/group
WORKDIR /src
COPY --chown=app:app app/ ./
COPY --chmod=0755 <<EOF /usr/local/bin/hello
#!/bin/sh
echo hello from the heredoc
EOF
ADD pkg.tar.gz /opt/
FROM {BASE}
COPY --from=build /src /final
COPY --from=build /opt/pkg/readme /usr/local/bin/hello /bin2/
""", {"app/main.txt": "main\n", "app/debug.log": "noise\n", "app/keep.log": "kept\n",
      "app/sub/deep.txt": "deep\n", "secret.key": "do not send\n"})
    (ctx / "pkg.tar.gz").write_bytes(archive.getvalue())
    (ctx / ".dockerignore").write_text("secret.key\n**/*.log\n!app/keep.log\n")
    site.build(ctx, "-t", "copy:1")
    listing = site.run("copy:1", "sh", "-c",
                       "cd /final && find . -type f | sort && stat -c '%u:%g %a %n' main.txt")
    assert listing == "./keep.log\n./main.txt\n./sub/deep.txt\n1234:1234 644 main.txt\n"
    assert site.run("copy:1", "cat", "/bin2/readme") == "inside the archive\n"
    assert site.run("copy:1", "/bin2/hello") == "hello from the heredoc\n"
    # content decides the cache, not times: a touched file hits, a changed one misses
    os.utime(ctx / "app/main.txt", (1, 1))
    assert "--> CACHED" in site.build(ctx, "-t", "copy:1").stdout.decode().split("COPY")[1]
    (ctx / "app/main.txt").write_text("main, changed\n")
    out = site.build(ctx, "-t", "copy:2").stdout.decode()
    assert out.split("STEP 4/")[1].split("STEP")[0].count("CACHED") == 0
    assert site.run("copy:2", "cat", "/final/main.txt") == "main, changed\n"


def test_copy_refuses_what_leaves_the_context(site: Site) -> None:
    outside = site.work / "outside-secret"
    outside.write_text("secret\n")
    ctx = site.context("escape", f"FROM {BASE}\nCOPY ../outside-secret /x\n")
    err = site.build(ctx, check=False).stderr.decode()
    assert "outside-secret" in err and "Traceback" not in err
    ctx = site.context("escape-link", f"FROM {BASE}\nCOPY link /x\n")
    (ctx / "link").symlink_to(outside)
    proc = site.build(ctx, check=False)
    assert proc.returncode == 1 and b"link" in proc.stderr
    ctx = site.context("missing", f"FROM {BASE}\nCOPY nothere.txt /x\n")
    err = site.build(ctx, check=False).stderr.decode()
    assert "nothere.txt" in err and len(err.splitlines()) == 2


# -- the cache is never stale ----------------------------------------------------------------


PROPERTY_DOCKERFILE = f"""\
FROM {BASE}
ARG A=first
COPY files/ /files/
RUN cat /files/* > /all 2>/dev/null; echo "$A" >> /all
ENV E=one
RUN echo "$E $A" > /env
"""


def test_a_cached_build_equals_a_fresh_one(site: Site) -> None:
    """Random edits of context files, build args and instructions: after each, a build
    that may use the cache gives the same files as a --no-cache build of the same inputs."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ctx = site.context("property", PROPERTY_DOCKERFILE, {"files/f0": "zero\n"})
    edits = st.lists(st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3), st.text("abc", max_size=5)),
        st.tuples(st.just("touch"), st.integers(0, 3), st.just("")),
        st.tuples(st.just("remove"), st.integers(0, 3), st.just("")),
        st.tuples(st.just("arg"), st.just(0), st.sampled_from(["first", "second"])),
        st.tuples(st.just("env"), st.just(0), st.sampled_from(["one", "two"])),
    ), min_size=1, max_size=3)
    state = {"arg": "first"}

    def tree(image: str) -> str:
        return site.run(image, "sh", "-c", "cd / && ls -ln files | sed 1d | awk '{print $1,$3,$4,"
                        "$5,$9}'; md5sum files/* all env")

    @settings(max_examples=6, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits)
    def check(steps: list[tuple[str, int, str]]) -> None:
        for kind, n, text in steps:
            path = ctx / "files" / f"f{n}"
            if kind == "write":
                path.write_text(text)
            elif kind == "touch" and path.exists():
                os.utime(path, (n * 1000, n * 1000))
            elif kind == "remove" and len(list((ctx / "files").iterdir())) > 1:
                path.unlink(missing_ok=True)
            elif kind == "arg":
                state["arg"] = text
            elif kind == "env":
                (ctx / "Dockerfile").write_text(PROPERTY_DOCKERFILE.replace("E=one", f"E={text}"))
        args = ("--build-arg", f"A={state['arg']}")
        site.build(ctx, *args, "-t", "prop:cached")
        site.build(ctx, *args, "-t", "prop:fresh", "--no-cache")
        assert tree("prop:cached") == tree("prop:fresh")

    check()


def test_a_killed_build_leaves_no_container_mount_or_image(site: Site) -> None:
    from lamina.core.host import mounts

    ctx = site.context("killed", f"""\
FROM {BASE}
RUN echo done-before > /before
RUN echo started; sleep 60
""")
    images = site.out("images", "-q")
    layers_before = {lay["id"] for lay in json.loads(site.out("layer", "ls", "--format", "json"))}
    proc = subprocess.Popen([*LAMINA, "--root", str(site.root), "--driver", site.driver,
                             "build", "--network", "none", "-t", "killed:1", str(ctx)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == b"started":
            break
    proc.kill()
    proc.wait()
    site("ps", "-a")  # the next command cleans up
    assert site.out("images", "-q") == images  # no half image
    assert mounts.mounts_under(site.root) == []
    assert not any(c.get("Labels") for c in json.loads(site.out("ps", "-a", "--format", "json")))
    layers = json.loads(site.out("layer", "ls", "--format", "json"))
    assert not [lay for lay in layers if lay["writable"]]  # the step's container went
    # what the finished step made stays as cache: the next build uses it safely
    new = {lay["id"] for lay in layers} - layers_before
    assert len(new) <= 2  # the finished RUN's layer (and the image's init layer)
    (ctx / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo done-before > /before\n")
    out = site.build(ctx, "-t", "killed:2").stdout.decode()
    assert "CACHED" in out and site.run("killed:2", "cat", "/before") == "done-before\n"


def test_podman_runs_a_lamina_built_image_alike(site: Site, tmp_path: Path, podman) -> None:
    """Images others accept: saved by lamina, loaded by podman, the same output."""
    ctx = site.context("interop", f"""\
FROM {BASE}
ENV WHO=podman
WORKDIR /srv
COPY hello.txt .
RUN echo "made in a RUN" > made.txt
USER 65534:65534
ENTRYPOINT ["sh", "-c", "cat hello.txt made.txt; echo \\"$WHO $(id -u) $(pwd)\\"", "--"]
""", {"hello.txt": "hello from the context\n"})
    site.build(ctx, "-t", "interop/app:1")
    expected = site.run("interop/app:1")
    assert expected == "hello from the context\nmade in a RUN\npodman 65534 /srv\n"
    archive = tmp_path / "app.tar"
    site("save", "-o", str(archive), "interop/app:1")
    loaded = podman("load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    ran = podman("run", "--rm", "--pull", "never", "--net", "none", "docker.io/interop/app:1")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == expected


def test_an_unchanged_build_gives_the_same_image(site: Site) -> None:
    """As Docker's cached builds: the same inputs, the same image id, also without
    --timestamp; any change (here a label) gives another."""
    ctx = site.context("same-id", f"FROM {BASE}\nRUN echo x > /x\nLABEL a=1\n")
    first = site.build(ctx, "-q").stdout.decode().strip()
    assert site.build(ctx, "-q").stdout.decode().strip() == first
    (ctx / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo x > /x\nLABEL a=2\n")
    assert site.build(ctx, "-q").stdout.decode().strip() != first


def test_prune_reclaims_the_build_cache(site: Site) -> None:
    ctx = site.context("prune", f"FROM {BASE}\nRUN echo once > /once\n")
    site.build(ctx, "-t", "prune:1")

    def entries() -> list[str]:
        return [json.loads(e.read_text())["layer_id"]
                for e in (site.root / "buildcache").glob("*.json")]

    before = entries()
    site("rmi", "prune:1")
    site("prune")  # the step's layer no image uses, and its cache entry
    layers = {lay["id"] for lay in json.loads(site.out("layer", "ls", "--format", "json"))}
    after = entries()
    assert len(after) < len(before) and all(layer in layers for layer in after)
    assert "CACHED" not in site.build(ctx, "-t", "prune:1").stdout.decode()


def test_shell_maintainer_and_copy_from_an_image(site: Site) -> None:
    ctx = site.context("shell", f"""\
FROM {BASE}
MAINTAINER someone@example.com
SHELL ["/bin/sh", "-e", "-c"]
RUN echo "via $0" > /shell
COPY --from={BASE} /etc/passwd /copied-passwd
CMD cat /shell
""")
    site.build(ctx, "-t", "shell:1")
    assert site.run("shell:1") == "via /bin/sh\n"
    assert site.run("shell:1", "cat", "/copied-passwd").startswith("root:x:0:0:")
    config = site.config("shell:1")
    assert config["Shell"] == ["/bin/sh", "-e", "-c"]
    assert config["Cmd"] == ["/bin/sh", "-e", "-c", "cat /shell"]  # shell form, SHELL's
    image = json.loads(site.out("inspect", "shell:1"))[0]
    assert image["Author"] == "someone@example.com"


def test_ctrl_c_mid_build_tags_nothing_and_leaves_nothing(site: Site) -> None:
    import signal

    from lamina.core.host import mounts

    ctx = site.context("interrupted", f"FROM {BASE}\nRUN echo started; sleep 60\n")
    proc = subprocess.Popen([*LAMINA, "--root", str(site.root), "--driver", site.driver,
                             "build", "--network", "none", "-t", "interrupted:1", str(ctx)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == b"started":
            break
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the build
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"Traceback" not in err
    assert "interrupted:1" not in site.out("images")
    assert mounts.mounts_under(site.root) == []
    assert not [lay for lay in json.loads(site.out("layer", "ls", "--format", "json"))
                if lay["writable"]]
