"""Open the built docs site in headless Chromium: every page loads with no console error, its plotly figures render,
and the search box finds pages.

Usage: ``python tests/docs_browser.py site`` after ``mkdocs build`` (``.ci/run`` does both). Speaks the Chrome
DevTools Protocol over tornado's websocket client (tornado comes with the Jupyter test dependencies), so it needs
no browser-automation package; Chromium itself: ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

SEARCH_QUERY = "task vector"
SETTLE_S = 1.5            # after the load event: scripts that run late (search index, plotly) get this long


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("No Chromium found: apt-get install -y chromium")


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Page:
    """One browser tab over the DevTools protocol."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.write_message(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.read_message())
            if message.get("id") == my_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    async def drain(self, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            try:
                message = await asyncio.wait_for(self.ws.read_message(), timeout=left)
            except asyncio.TimeoutError:
                return
            if message is None:
                return
            self.events.append(json.loads(message))

    async def open(self, url: str, timeout: float = 30.0) -> bool:
        """Navigate and wait for the load event; True when it fired."""
        self.events.clear()
        await self.call("Page.navigate", url=url)
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end:
            if any(e.get("method") == "Page.loadEventFired" for e in self.events):
                await self.drain(SETTLE_S)
                return True
            await self.drain(0.2)
        return False

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        errors = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                           for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return errors


PLOTLY_JS = """Array.from(document.querySelectorAll('.plotly-graph-div')).map(
    d => !!d.querySelector('svg.main-svg') && d.getBoundingClientRect().height > 0)"""

SEARCH_JS = """new Promise(resolve => {
  const input = document.querySelector('input.md-search__input');
  if (!input) { resolve(-1); return; }
  input.focus(); input.value = %s;
  for (const type of ['focus', 'input', 'keyup']) input.dispatchEvent(new Event(type, {bubbles: true}));
  let tries = 0;
  const poll = () => {
    const n = document.querySelectorAll('.md-search-result__item').length;
    if (n > 0 || ++tries > 100) resolve(n); else setTimeout(poll, 100);
  };
  poll();
})"""


async def check_site(site: Path, browser: str) -> list[str]:
    from tornado.websocket import websocket_connect

    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html" and "assets" not in p.parts)
    if not pages:
        return [f"{site}: no html pages (run mkdocs build first)"]
    server, base = serve(site)
    profile = tempfile.mkdtemp(prefix="docs_browser_")
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    problems: list[str] = []
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = m.group(1)
                break
        if port is None:
            return ["Chromium did not start its DevTools endpoint"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        target = json.loads(urllib.request.urlopen(request, timeout=30).read())
        ws = await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=64 * 2**20)
        page = Page(ws)
        for domain in ("Page", "Runtime", "Log"):
            await page.call(f"{domain}.enable")
        n_figures = 0
        external: set[str] = set()
        for path in pages:
            rel = path.relative_to(site).as_posix()
            url = base + rel
            if not await page.open(url):
                problems.append(f"{rel}: no load event within 30 s")
                continue
            title = await page.js("document.title")
            if not title or not await page.js("!!document.querySelector('article, .md-content')"):
                problems.append(f"{rel}: no content rendered (title {title!r})")
            figures = await page.js(PLOTLY_JS) or []
            n_figures += len(figures)
            if not all(figures):
                problems.append(f"{rel}: {figures.count(False)} of {len(figures)} plotly figures did not render")
            for e in page.console_errors():
                # A resource from another host (the theme's web fonts) fails on an offline machine: not the site's
                # fault, but worth knowing (`theme: font: false` in mkdocs.yml serves system fonts instead).
                if "Failed to load resource" in e and base not in e and "http" in e:
                    external.add(e.split("resource: ", 1)[-1])
                else:
                    problems.append(f"{rel}: {e}")
        await page.open(base + "index.html")
        hits = await page.js(SEARCH_JS % json.dumps(SEARCH_QUERY))
        if not hits or hits < 1:
            problems.append(f"search for {SEARCH_QUERY!r} returned {hits} results")
        print(f"docs site: {len(pages)} pages opened in {os.path.basename(browser)}, {n_figures} plotly figures, "
              f"search {SEARCH_QUERY!r}: {hits} results, {len(problems)} problems")
        for e in sorted(external):
            print(f"note: an external resource did not load (offline?): {e}")
        ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", default="site", help="the built site folder (mkdocs build)")
    args = parser.parse_args(argv)
    problems = asyncio.run(check_site(Path(args.site).resolve(), find_chromium()))
    for p in problems:
        print("FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
