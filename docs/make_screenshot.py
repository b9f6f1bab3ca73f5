"""Make docs/dashboard.png: run ``holyroute demo``, serve its event log with ``holyroute dashboard``'s server, and
photograph the page in headless Chromium, the same way tests/test_dashboard.py does.

    apt-get install -y chromium        # or any Chromium; pass --chromium PATH
    .venv/bin/python docs/make_screenshot.py [--out docs/dashboard.png] [--calls 300]

Offline: the demo's upstreams and the dashboard listen on 127.0.0.1 only. The configuration shown is the demo's
routing with placeholder local URLs (the demo's own upstreams are gone once it ends); its keys never reach the page.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from holyroute.cli import demo_config, run_demo
from holyroute.config import load_config
from holyroute.readers.dashboard import serve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("dashboard.png"))
    parser.add_argument("--calls", type=int, default=300, help="holyroute demo --calls")
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="the Chromium executable")
    parser.add_argument("--width", type=int, default=1440, help="viewport width in CSS pixels")
    args = parser.parse_args()
    if not args.chromium:
        parser.error("no chromium on PATH: apt-get install -y chromium, or pass --chromium")
    from playwright.sync_api import sync_playwright

    out = args.out.resolve()
    home = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # so that the page names the files as a user who ran the demo would see them
        events = Path("holyroute-demo-events.jsonl")
        run_demo(args.calls, events, io.StringIO())
        urls = [f"http://127.0.0.1:{port}/v1" for port in range(8101, 8106)]
        config_path = Path("holyroute.yaml")
        config_path.write_text(yaml.safe_dump(demo_config(*urls), sort_keys=False), encoding="utf-8")
        with (
            serve(events, load_config(config_path), config_path=str(config_path)) as server,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": args.width, "height": 900}, device_scale_factor=1)
                page.goto(server.url)
                page.wait_for_selector("#endpoints-table tbody tr")
                page.wait_for_selector("#live[data-state='live']")
                time.sleep(0.3)  # let the last layout settle before the photograph
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
            finally:
                browser.close()
        os.chdir(home)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
