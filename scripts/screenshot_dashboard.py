"""Takes docs/dashboard.png: headless Debian chromium (Playwright) on the dashboard of `dgdo run --demo`.

    .venv/bin/python scripts/screenshot_dashboard.py [--out docs/dashboard.png] [--demo 20] [--wait-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]


async def shoot(url: str, out: Path, wait_s: float) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                          args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(url)
        await page.wait_for_selector("#conn-status[data-state=live]", timeout=30_000)
        # Let the demo get going, then pick a trip so the timeline shows.
        await page.wait_for_timeout(wait_s * 1000)
        row = page.locator('#orders tbody tr[data-status="started"], #orders tbody tr[data-status="arriving"]')
        if await row.count():
            await row.first.click()
        await page.wait_for_timeout(600)
        await page.screenshot(path=out)
        await browser.close()


def main() -> int:
    a = argparse.ArgumentParser()
    a.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    a.add_argument("--demo", type=int, default=20)
    a.add_argument("--wait-s", type=float, default=20.0)
    args = a.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run", "--port", "0", "--demo", str(args.demo),
                             "--status-interval", "0", "--no-journal"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"\[dgdo\] dashboard: (\S+)", line)
            if m:
                break
        else:
            raise SystemExit("dgdo run printed no dashboard link")
        asyncio.run(shoot(m.group(1), args.out, args.wait_s))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
