"""Volumes as Docker's users know them: named and anonymous ones, the image's VOLUMEs,
filled from the image when new, kept across containers, removed only when unused."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root
from containersite import IMAGE, Site, busybox_site

from lamina.core.containers.spec import Volume, name_volumes, parse_volume
from lamina.core.errors import ContainerError

pytestmark = needs_root


def test_what_dash_v_means() -> None:
    assert parse_volume("/srv:/data") == Volume("bind", "/data", "/srv")
    assert parse_volume("/srv:/data:ro") == Volume("bind", "/data", "/srv", readonly=True)
    assert parse_volume("cache:/data") == Volume("volume", "/data", "cache")
    assert parse_volume("/data") == Volume("volume", "/data", options="anonymous")
    for wrong, words in (("c:/data:rx", "invalid volume mode"), ("c", "invalid volume"),
                         ("x:/data", "invalid volume name"), ("cache:data", "not an absolute"),
                         ("-bad:/data", "invalid volume name")):
        with pytest.raises(ContainerError, match=words):
            parse_volume(wrong)
    named = name_volumes([parse_volume("/data"), parse_volume("/srv:/etc")],
                         {"/etc": {}, "/var/lib/db/": {}})
    assert [(v.kind, v.target) for v in named] == [("volume", "/data"), ("bind", "/etc"),
                                                   ("volume", "/var/lib/db/")]
    assert all(len(v.source) == 64 for v in named if v.kind == "volume")
    assert named[0].source != named[2].source


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("volumes")
    s = next(busybox_site(root / "store", busybox_tar))
    context = root / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {IMAGE}\n"
        "RUN mkdir -p /var/db && echo seeded > /var/db/seed && chown 5:6 /var/db "
        "&& chmod 0750 /var/db\n"
        "VOLUME /var/db\n")
    s("build", "-q", "--network", "none", "-t", "db:1", str(context))
    yield s
    s("rm", "-f", "-v", *s.out("ps", "-a", "-q").split(), check=False)
    s("volume", "prune", "-a", "-f")


def _volumes(site: Site) -> set[str]:
    return set(site.out("volume", "ls", "-q").split())


def test_a_named_volume_outlives_its_containers(site: Site) -> None:
    assert site.out("volume", "create", "--label", "team=a", "keep") == "keep\n"
    assert site.out("volume", "create", "keep") == "keep\n"  # there already: the same
    info = json.loads(site.out("volume", "inspect", "keep"))[0]
    assert (info["Name"], info["Driver"], info["Labels"]) == ("keep", "local", {"team": "a"})
    site("run", "--rm", "--network", "none", "-v", "keep:/data", IMAGE, "sh", "-c",
         "echo one > /data/f")
    assert Path(info["Mountpoint"], "f").read_text() == "one\n"
    ran = site("run", "--rm", "--network", "none", "-v", "keep:/data:ro", IMAGE, "sh", "-c",
               "cat /data/f; touch /data/g 2>/dev/null || echo read-only")
    assert ran.stdout == b"one\nread-only\n"
    # made at first use; a volume a container uses is not removed, even with -f
    site("create", "--name", "user", "-v", "fresh:/data", IMAGE, "true")
    assert {"keep", "fresh"} <= _volumes(site)
    mounts = json.loads(site.out("inspect", "-f", "{{json .Mounts}}", "user"))
    assert mounts == [{"Type": "volume", "Name": "fresh", "Destination": "/data", "RW": True,
                       "Source": str(Path(info["Mountpoint"]).parent.parent / "fresh/_data")}]
    refused = site("volume", "rm", "-f", "fresh", check=False)
    assert refused.returncode != 0 and b"in use by container user" in refused.stderr
    assert site.out("volume", "ls", "-q", "--filter", "dangling=true").split() == ["keep"]
    assert site.out("volume", "ls", "-q", "--filter", "label=team=a").split() == ["keep"]
    site("rm", "-v", "user")  # -v removes anonymous volumes only
    assert {"keep", "fresh"} <= _volumes(site)
    assert site.out("volume", "rm", "keep", "fresh") == "keep\nfresh\n"
    missing = site("volume", "rm", "keep", check=False)
    assert missing.returncode != 0 and b"no such volume" in missing.stderr
    assert site("volume", "rm", "-f", "keep").returncode == 0


def test_a_new_volume_takes_what_the_image_has_there(site: Site) -> None:
    site("run", "--rm", "--network", "none", "-v", "etc:/etc", IMAGE, "true")
    path = Path(json.loads(site.out("volume", "inspect", "etc"))[0]["Mountpoint"])
    assert (path / "passwd").read_text().startswith("root:x:0:0:")
    # not again once it has files: what the container wrote stays
    (path / "passwd").write_text("changed\n")
    ran = site("run", "--rm", "--network", "none", "-v", "etc:/etc", IMAGE, "cat", "/etc/passwd")
    assert ran.stdout == b"changed\n"
    site("volume", "rm", "etc")


def test_the_images_volume_is_anonymous_and_goes_with_rm_v(site: Site) -> None:
    before = _volumes(site)
    ran = site("run", "--network", "none", "--name", "db", "db:1", "sh", "-c",
               "cat /var/db/seed; stat -c '%u:%g %a' /var/db; echo mine > /var/db/mine")
    assert ran.stdout == b"seeded\n5:6 750\n"
    (new,) = _volumes(site) - before
    assert len(new) == 64
    # the same container started again: the same volume, its files kept
    assert site("start", "-a", "db").stdout == b"seeded\n5:6 750\n"
    assert os.path.exists(Path(json.loads(site.out("volume", "inspect", new))[0]["Mountpoint"],
                               "mine"))
    site("rm", "db")  # without -v the volume stays, dangling, for volume prune
    assert new in _volumes(site)
    pruned = site.out("volume", "prune", "-f")
    assert new in pruned and "Total reclaimed space" in pruned
    assert _volumes(site) == before
    # --rm takes its anonymous volumes along; a -v over the image's path replaces it
    site("run", "--rm", "--network", "none", "db:1", "true")
    site("run", "--rm", "--network", "none", "-v", "named:/var/db", "db:1", "true")
    assert _volumes(site) == before | {"named"}
    site("volume", "rm", "named")


def test_volume_prune_keeps_named_volumes_unless_all(site: Site) -> None:
    site("volume", "create", "kept")
    site("create", "--name", "holder", "-v", "/anon", IMAGE, "true")
    (anon,) = [v for v in _volumes(site) if len(v) == 64]
    (row,) = [r for r in site.out("system", "df").splitlines() if r.startswith("Local Volumes")]
    assert row.split()[2:4] == ["2", "1"]  # TOTAL, ACTIVE
    usage = json.loads(site.out("system", "df", "--format", "json"))["volumes"]
    assert sorted((v["name"], v["links"]) for v in usage) == sorted([("kept", 0), (anon, 1)])
    site("volume", "prune", "-f")
    assert {"kept", anon} <= _volumes(site)  # in use by holder; kept is named
    site("rm", "holder")
    site("volume", "prune", "-f")
    assert anon not in _volumes(site) and "kept" in _volumes(site)
    site("volume", "prune", "-a", "-f")
    assert "kept" not in _volumes(site)


@needs_root
def test_volumes_from_shares_another_containers_volumes(site: Site, tmp_path: Path) -> None:
    """Docker's backup recipe: ``run --volumes-from db`` sees db's named and anonymous
    volumes and binds, in db's modes or the one given; a -v of the same path wins; removing
    the borrower with -v leaves db's anonymous volume to db."""
    bound = tmp_path / "bound"
    bound.mkdir()
    (bound / "g").write_text("bind\n")
    site("run", "--network", "none", "--name", "db", "-v", "vf-named:/data",
         "-v", "/anon", "-v", f"{bound}:/bind:ro", IMAGE, "sh", "-c",
         "echo named > /data/f; echo anonymous > /anon/h")
    assert site.out("run", "--rm", "--network", "none", "--volumes-from", "db", IMAGE,
                    "cat", "/data/f", "/anon/h", "/bind/g") == "named\nanonymous\nbind\n"
    # db's bind is read-only there, its volumes writable; :ro makes all of them read-only
    wrote = site("run", "--rm", "--network", "none", "--volumes-from", "db", IMAGE, "sh",
                 "-c", "echo more >> /data/f && echo x > /bind/g", check=False)
    assert wrote.returncode != 0 and b"Read-only file system" in wrote.stderr
    refused = site("run", "--rm", "--network", "none", "--volumes-from", "db:ro", IMAGE,
                   "sh", "-c", "echo x > /anon/h", check=False)
    assert refused.returncode != 0 and b"Read-only file system" in refused.stderr
    assert site.out("run", "--rm", "--network", "none", "--volumes-from", "db",
                    "--tmpfs", "/data", IMAGE, "ls", "/data") == ""  # the given one wins
    anonymous = [v["Name"] for v in json.loads(site.out("inspect", "db"))[0]["Mounts"]
                 if v["Destination"] == "/anon"]
    site("run", "--network", "none", "--name", "borrower", "--volumes-from", "db", IMAGE,
         "true")
    site("rm", "-v", "borrower")
    assert anonymous[0] in site.out("volume", "ls", "-q").split()
    assert site.out("run", "--rm", "--network", "none", "--volumes-from", "db", IMAGE,
                    "cat", "/data/f") == "named\nmore\n"
    bad = site("run", "--rm", "--network", "none", "--volumes-from", "db:rx", IMAGE, "true",
               check=False)
    assert bad.returncode == 125 and b"invalid --volumes-from" in bad.stderr
    missing = site("run", "--rm", "--network", "none", "--volumes-from", "nosuch", IMAGE,
                   "true", check=False)
    assert missing.returncode == 125 and b"nosuch" in missing.stderr
    site("rm", "-v", "db")
    site("volume", "rm", "vf-named")
