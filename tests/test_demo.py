"""`wfvae demo --fast`: every stage end to end (dataset, training, reconstruction, evaluation, report)."""

import json
from html.parser import HTMLParser

from wfvae.cli import main as cli


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))


def test_demo_fast_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("WFVAE_LPIPS_BACKBONE", raising=False)
    monkeypatch.delenv("WFVAE_I3D_PATH", raising=False)
    assert cli(["demo", "--fast", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    before, after = summary["metrics"]["before"], summary["metrics"]["after"]
    # even four steps move a random model clearly towards the held-out clips
    assert after["psnr"] > before["psnr"] + 0.5, (before, after)
    assert "psnr:" in out and "before training ->" in out and "report:" in out
    # weights for LPIPS/FVD are not on this machine: the demo says which file to provide
    assert any("alexnet-owt-7be5be79.pth" in n for n in summary["notes"])
    assert any("i3d_torchscript.pt" in n for n in summary["notes"])
    recon = tmp_path / "demo" / "reconstructions" / "after_training"
    assert len(list((recon / "origin").rglob("*.mkv"))) == 2 and len(list(recon.glob("*/*/*.mkv"))) >= 2
    html = (tmp_path / "demo" / "report.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert parser.images and all(src.startswith("data:image/") for src in parser.images)
    assert "http://" not in html and "https://" not in html
