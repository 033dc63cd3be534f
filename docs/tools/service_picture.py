"""Draw docs/img/service.png: the service page on the one Twitter-GMNER image we have (O_3498, a train post).

The MLLM is the gold-box oracle behind the replay server, so the boxes are the annotators' boxes; the
entities and their scores are the model's. It runs `refineg serve` as a user would and takes the shot with
headless chromium.

    .venv/bin/python docs/tools/service_picture.py --model runs/demo/model [--out docs/img/service.png]
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from refineg.data import load_samples
from refineg.llm.embedded import free_port
from refineg.testing.fake_openai import FakeOpenAIServer
from refineg.testing.oracle import GoldOracle

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared/data/twitter-gmner"
IMAGE = DATA / "sample_images/O_3498.jpg"
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]


def _serving(model: Path, llm_url: str, port: int, config: Path) -> subprocess.Popen:
    """`refineg serve` on a loopback port, with the oracle as its MLLM, once it answers /healthz."""
    config.write_text("[ground]\nskip_ungroundable = false\n")
    args = ["serve", "--model", model, "--port", port, "--config", config]
    args += ["--llm-base-url", llm_url, "--llm-model", "oracle", "--cache-dir", config.parent / "cache"]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "refineg"), *map(str, args)])
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("refineg serve did not start in 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/img/service.png")
    args = ap.parse_args()
    post = next(s for s in load_samples(DATA / "Twitter10000_v2.0/txt/train.txt") if s.id == "O_3498")
    image = "data:image/jpeg;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(default=GoldOracle([post])) as llm:
        proc = _serving(args.model.resolve(), llm.base_url, port, Path(tmp) / "oracle.toml")
        try:
            url = f"http://127.0.0.1:{port}/#text={quote(' '.join(post.tokens))}&image={quote(image)}"
            shot = [*CHROMIUM, f"--user-data-dir={tmp}/profile", "--virtual-time-budget=20000"]
            shot += ["--window-size=1100,720", f"--screenshot={args.out.resolve()}", url]
            subprocess.run(shot, check=True, capture_output=True, timeout=180)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{args.out}: {post.text!r}, {len(llm.requests)} MLLM request(s)")


if __name__ == "__main__":
    main()
