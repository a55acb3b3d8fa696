"""fastmine.hub: URLs and catalogue names fetched once into a verified cache. Every file comes
from a local HTTP server on 127.0.0.1 (an ephemeral port) that counts requests and can cut a
transfer, answer 404, redirect or stall; no other host is ever contacted."""
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import torch
import yaml

import fastmine as fm
from fastmine import cli, hub
from fastmine.evaluation import Scorer
from fastmine.metrics import lpips as lpips_module

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "stylegan2_ada_tiny.pkl"


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.redirects, self.requests = {}, {}, []
        self.cut, self.stall, self.delay = set(), set(), {}

    def url(self, path):
        return f"http://127.0.0.1:{self.server_port}{path}"

    def gets(self, path=None):
        return [r for r in self.requests if path is None or r[0] == path]


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path in srv.stall:
            time.sleep(3)
            return
        time.sleep(srv.delay.get(self.path, 0))
        if self.path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[self.path])
            self.end_headers()
            return
        if self.path not in srv.files:
            self.send_error(404, "Not Found")
            return
        body, start = srv.files[self.path], 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in srv.cut:  # half of what was promised, then the connection closes
            srv.cut.discard(self.path)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch):
    """A connection to any host but 127.0.0.1 fails the test (a URL that escaped the mirror)."""
    connect = socket.create_connection

    def local_only(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"a test tried to reach {address[0]}"
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", local_only)


@pytest.fixture
def online(tmp_path, monkeypatch):
    """An empty cache, network access allowed (the suite runs with FASTMINE_OFFLINE=1)."""
    monkeypatch.delenv("FASTMINE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("FASTMINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _samples(adapter):
    torch.manual_seed(0)
    with torch.no_grad():
        return adapter(adapter.latent_spec.sample(3, torch.Generator().manual_seed(0)))


def _mirror(server, monkeypatch, name, body):
    """Serve ``body`` where FASTMINE_MIRROR looks for the catalogue entry ``name``."""
    monkeypatch.setenv("FASTMINE_MIRROR", server.url(""))
    url = hub.catalogue()[name]["url"]
    path = "/" + url.split("://", 1)[1]
    server.files[path] = body
    return path


# ------------------------------------------------------------------ URLs and names as sources
def test_a_url_loads_as_the_local_file_and_a_second_load_makes_no_request(server, online, capfd):
    server.files["/pretrained/tiny.pkl"] = FIXTURE.read_bytes()
    url = server.url("/pretrained/tiny.pkl")
    from_url = fm.load_generator(url)
    assert "first download of" in capfd.readouterr().err  # the sha256 it recorded is said once
    assert len(server.gets()) == 1
    torch.testing.assert_close(_samples(from_url), _samples(fm.load_generator(FIXTURE)), rtol=0, atol=0)
    fm.load_generator(url)
    assert len(server.gets()) == 1  # the second load reads the cache
    cached = online / "127.0.0.1_{}".format(server.server_port) / "pretrained" / "tiny.pkl"
    assert cached.read_bytes() == FIXTURE.read_bytes()
    assert (cached.parent / "tiny.pkl.sha256").read_text().split()[0] == hashlib.sha256(
        FIXTURE.read_bytes()).hexdigest()


def test_a_catalogue_name_is_a_source_through_the_mirror(server, online, monkeypatch, tmp_path):
    path = _mirror(server, monkeypatch, "stylegan2-ada/ffhq-256", FIXTURE.read_bytes())
    out = tmp_path / "ffhq.safetensors"
    assert cli.main(["convert", "stylegan2-ada/ffhq-256", str(out)]) == 0
    assert server.gets() == [(path, None)]
    torch.testing.assert_close(_samples(fm.load_generator(out)), _samples(fm.load_generator(FIXTURE)), rtol=0,
                               atol=0)
    assert fm.load_critic("stylegan2-ada/ffhq-256") is not None and len(server.gets()) == 1


def test_offline_uses_the_cache_and_refuses_anything_else_in_one_line(server, online, monkeypatch, capsys):
    server.files["/tiny.pkl"] = FIXTURE.read_bytes()
    url = server.url("/tiny.pkl")
    first = hub.fetch(url)
    for switch in ("FASTMINE_OFFLINE", "HF_HUB_OFFLINE"):
        with monkeypatch.context() as m:
            m.setenv(switch, "1")
            assert hub.fetch(url) == first
            with pytest.raises(FileNotFoundError) as e:
                hub.fetch(server.url("/other.pkl"))
            assert f"{switch}=1 forbids downloading" in str(e.value) and "other.pkl" in str(e.value)
            assert "\n" not in str(e.value)
    assert len(server.gets()) == 1  # offline made no request at all
    monkeypatch.setenv("FASTMINE_OFFLINE", "1")
    capsys.readouterr()
    assert cli.main(["sample", "stylegan2-ada/ffhq-256", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ffhq-res256-mirror-paper256-noaug.pkl" in err and "--to DIR" in err


# ------------------------------------------------------------------ verification
def test_a_wrong_sha256_is_refused_and_nothing_is_kept(server, online):
    server.files["/f.bin"] = b"x" * 1000
    with pytest.raises(hub.DownloadError, match="its sha256 is .* not the expected 0000"):
        hub.fetch(server.url("/f.bin"), sha256="0" * 64)
    with pytest.raises(hub.DownloadError, match="1000 bytes where 999 were expected"):
        hub.fetch(server.url("/f.bin"), size=999)
    assert [p for p in online.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_the_hash_prefix_of_a_torch_hub_name_is_checked(server, online, monkeypatch):
    body = b"weights" * 100
    good = f"/w-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    server.files[good] = server.files["/w-deadbeef.pth"] = body
    assert hub.fetch(server.url(good)).read_bytes() == body
    with pytest.raises(hub.DownloadError, match="does not start with deadbeef"):
        hub.fetch(server.url("/w-deadbeef.pth"))
    # LPIPS's AlexNet: torchvision's name carries 7be5be79; a different file is refused, not used
    _mirror(server, monkeypatch, "metrics/alexnet", body)
    with pytest.raises(hub.DownloadError, match="does not start with 7be5be79"):
        lpips_module.load_lpips()
    assert lpips_module.find_lpips() is None
    assert [p.name for p in online.rglob("alexnet-owt-7be5be79.pth*")] == ["alexnet-owt-7be5be79.pth.lock"]


def test_a_cached_file_that_changed_is_refused(server, online):
    server.files["/f.bin"] = b"a" * 100
    path = hub.fetch(server.url("/f.bin"))
    path.write_bytes(b"b" * 100)
    with pytest.raises(hub.DownloadError, match="changed since it was fetched.*fastmine cache --remove"):
        hub.fetch(server.url("/f.bin"))


# ------------------------------------------------------------------ transfers
def test_a_transfer_cut_half_way_is_resumed_with_a_range_request(server, online):
    body = os.urandom(100_000)
    server.files["/big.bin"] = body
    server.cut.add("/big.bin")
    assert hub.fetch(server.url("/big.bin")).read_bytes() == body
    assert server.gets() == [("/big.bin", None), ("/big.bin", "bytes=50000-")]
    # a part left by a process that died is resumed too
    server.files["/big2.bin"] = body
    part = hub.cache_path(server.url("/big2.bin")).with_name("big2.bin.part")
    part.write_bytes(body[:30_000])
    assert hub.fetch(server.url("/big2.bin")).read_bytes() == body
    assert server.gets("/big2.bin") == [("/big2.bin", "bytes=30000-")] and not part.exists()


def test_404_refused_and_stalled_servers_are_one_line_errors(server, online):
    with pytest.raises(hub.DownloadError, match="answered HTTP 404 Not Found") as e:
        hub.fetch(server.url("/missing.pkl"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(hub.DownloadError, match="connection refused") as e2:
        hub.fetch(f"http://127.0.0.1:{closed}/f.pkl")
    server.stall.add("/slow.pkl")
    start = time.monotonic()
    with pytest.raises(hub.DownloadError, match=r"no answer within 0.5 s \(the server stalled\)") as e3:
        hub.fetch(server.url("/slow.pkl"), timeout=0.5)
    assert time.monotonic() - start < 2.5
    for err in (e, e2, e3):
        assert "\n" not in str(err.value) and "f.pkl" in str(err.value) or ".pkl" in str(err.value)
    assert cli.main(["download", server.url("/missing.pkl")]) == 2


def test_a_redirect_is_followed(server, online):
    server.files["/real/file.bin"] = b"moved" * 10
    server.redirects["/old/file.bin"] = server.url("/real/file.bin")
    path = hub.fetch(server.url("/old/file.bin"))
    assert path.read_bytes() == b"moved" * 10 and path.parent.name == "old"  # kept under the URL asked for
    assert [p for p, _ in server.gets()] == ["/old/file.bin", "/real/file.bin"]


def test_two_processes_asking_at_once_download_once(server, online):
    server.files["/shared.bin"] = os.urandom(50_000)
    server.delay["/shared.bin"] = 1.0  # the second process arrives while the first downloads
    # hub.py imports nothing of fastmine: loaded alone, a process starts in a fraction of a second
    code = ("import importlib.util as u; s = u.spec_from_file_location('hub', {!r}); hub = u.module_from_spec(s); "
            "s.loader.exec_module(hub); print(hub.fetch({!r}))").format(hub.__file__, server.url("/shared.bin"))
    env = {k: v for k, v in os.environ.items() if k != "FASTMINE_OFFLINE"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and Path(outs[0][0].strip()).read_bytes() == server.files["/shared.bin"]
    assert len(server.gets("/shared.bin")) == 1


def test_ranks_other_than_local_rank_0_wait_for_the_file(server, online, monkeypatch):
    server.files["/r.bin"] = b"r" * 10
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(hub.DownloadError, match="waited 0 s for local rank 0"):
        hub.fetch(server.url("/r.bin"), wait=0.2)
    assert server.gets() == []  # it never downloads itself
    monkeypatch.setenv("LOCAL_RANK", "0")
    path = hub.fetch(server.url("/r.bin"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert hub.fetch(server.url("/r.bin"), wait=0.2) == path and len(server.gets()) == 1


# ------------------------------------------------------------------ the cache, the CLI
def test_download_to_a_folder_fills_a_cache_for_an_offline_machine(server, online, monkeypatch, tmp_path, capsys):
    _mirror(server, monkeypatch, "stylegan2-ada/ffhq-256", FIXTURE.read_bytes())
    folder = tmp_path / "for-the-cluster"
    assert cli.main(["download", "stylegan2-ada/ffhq-256", "--to", str(folder)]) == 0
    assert f"FASTMINE_CACHE={folder}" in capsys.readouterr().out
    monkeypatch.setenv("FASTMINE_CACHE", str(folder))
    monkeypatch.setenv("FASTMINE_OFFLINE", "1")
    torch.testing.assert_close(_samples(fm.load_generator("stylegan2-ada/ffhq-256")),
                               _samples(fm.load_generator(FIXTURE)), rtol=0, atol=0)
    assert len(server.gets()) == 1
    assert cli.main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert "stylegan2-ada/ffhq-256" in listing and "1 files, 73.5 kB" in listing
    assert cli.main(["cache", "--remove", "stylegan2-ada/ffhq-256"]) == 0
    assert hub.cached() == []
    assert cli.main(["cache", "--remove", "stylegan2-ada/ffhq-256"]) == 2  # one line: not in the cache


def test_models_lists_the_catalogue(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name, e in hub.catalogue().items() if e["kind"] == "models")
    assert "metrics/inception-v3" not in out


def test_the_catalogue_is_valid_and_every_name_resolves_to_a_url():
    rows = yaml.safe_load(hub.CATALOGUE_FILE.read_text())
    everything = rows["models"] + rows["weights"]
    names = [r["name"] for r in everything]
    assert len(names) == len(set(names)), "catalogue names must be unique"
    for row in everything:
        missing = [k for k in hub.REQUIRED_FIELDS if not row.get(k)]
        assert not missing, f"{row.get('name')}: missing {missing}"
        assert hub.entry(row["name"])["url"] == row["url"] and hub.is_url(row["url"])
        # the file keeps the URL's file name (with a hash of the query in front when it has one)
        assert hub.cache_path(row["url"]).name.endswith(urllib.parse.urlsplit(row["url"]).path.rsplit("/", 1)[1])
        assert row["source"].startswith("https://github.com/")
    families = {r["family"] for r in rows["models"]}
    assert {"stylegan2", "stylegan3", "biggan"} <= families
    assert sum(r["name"].startswith("stylegan3-") for r in rows["models"]) == 12  # stylegan3's README lists 12
    # the URLs must be the published ones; where the publishing package is installed, compare
    biggan = pytest.importorskip("pytorch_pretrained_biggan.model")
    for row in rows["models"]:
        if row["family"] == "biggan":
            key = "biggan-deep-" + row["name"].split("/")[1]
            assert row["url"] == biggan.PRETRAINED_MODEL_ARCHIVE_MAP[key]
            assert row["config"] == biggan.PRETRAINED_CONFIG_ARCHIVE_MAP[key]


def test_fid_on_3_channel_images_uses_inception_by_default(monkeypatch):
    asked = []

    def extractor(name, weights=None, device="cpu"):
        asked.append(name)
        raise RuntimeError("stop")

    monkeypatch.setattr("fastmine.evaluation.get_feature_extractor", extractor)
    for images in (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8)):
        with pytest.raises(RuntimeError, match="stop"):
            Scorer(images)
    assert asked == ["inception", "digits"]


def test_inception_weights_are_fetched_by_name_and_offline_says_where_to_put_them(monkeypatch):
    pytest.importorskip("torch_fidelity")
    from fastmine.metrics.features import InceptionFeatures

    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth at .*FASTMINE_CACHE"):
        InceptionFeatures()


def test_a_biggan_name_fetches_the_weights_and_their_config(server, online, monkeypatch):
    pytest.importorskip("pytorch_pretrained_biggan")
    from test_conditional import TINY_BIGGAN

    from fastmine.conditional import BigGANAdapterModule, load_biggan

    torch.manual_seed(0)
    module = BigGANAdapterModule(TINY_BIGGAN, truncation=0.4)
    weights = online.parent / "w.bin"
    torch.save(module.model.state_dict(), weights)
    _mirror(server, monkeypatch, "biggan-deep/128", weights.read_bytes())
    config = hub.catalogue()["biggan-deep/128"]["config"]
    server.files["/" + config.split("://", 1)[1]] = json.dumps(TINY_BIGGAN).encode()  # the tiny one, not 128 px
    adapter = load_biggan("biggan-deep/128")
    assert len(server.gets()) == 2 and adapter.module.config_dict["z_dim"] == TINY_BIGGAN["z_dim"]
    u = {"z": torch.randn(2, TINY_BIGGAN["z_dim"]), "class_embedding": module.embed(torch.tensor([1, 2]))}
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(adapter(u), module(**u), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="is a BigGAN of pytorch-pretrained-biggan: load it with"):
        fm.load_generator("biggan-deep/128")


def test_a_run_mines_a_url_source_and_starts_from_its_critic(server, online, tmp_path, capsys):
    server.files["/tiny.pkl"] = FIXTURE.read_bytes()
    url = server.url("/tiny.pkl")
    torch.save(torch.rand(16, 1, 8, 8) * 2 - 1, tmp_path / "target.pt")
    code = cli.main(["mine", f"source.generator={url}", "data.dataset=tensor", f"data.path={tmp_path / 'target.pt'}",
                     "train.steps=2", "train.batch_size=8", "miner.init=normal", "log.progress=false",
                     f"out_dir={tmp_path}", "name=u"])
    assert code == 0, capsys.readouterr().err
    assert f"the critic stored in {hub.cache_path(url)}" in capsys.readouterr().out  # the pickle's D, as the paper
    assert yaml.safe_load((tmp_path / "u" / "config.yaml").read_text())["source"]["generator"] == url
    assert len(server.gets()) == 1
    assert fm.load_sampler(tmp_path / "u" / "model.safetensors").sample(2, seed=0).shape == (2, 1, 8, 8)
