"""The playground page at / in a real browser: headless Chromium (Debian's
package) driven over its DevTools protocol types a prompt, runs it, waits for
streamed text in both panes, checks the page's text against the API and
saves a screenshot that must not be blank."""

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import requests

websocket = pytest.importorskip("websocket")
Image = pytest.importorskip("PIL.Image")

PROMPT = "The quick brown fox"
SCREENSHOT = os.path.join(tempfile.gettempdir(), "lora-serve-playground.png")


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed (apt-get install chromium)")


class DevTools:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.eval(expression):
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.fixture
def browser(server):
    profile = tempfile.mkdtemp(prefix="lora-chromium-")
    proc = subprocess.Popen(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1280,800", server.url + "/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            assert time.time() < deadline and proc.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        pages = []
        while not pages:
            pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                     if t["type"] == "page"]
            time.sleep(0.1)
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def test_playground_streams_base_and_adapters_side_by_side(server, browser):
    b = browser
    b.wait("document.readyState === 'complete' && document.querySelectorAll('.adapter').length >= 8")
    # Type the prompt as a person would: focus, select all, type.
    b.eval("(() => { const p = document.getElementById('prompt'); p.focus(); p.select(); return true; })()")
    b.call("Input.insertText", text=PROMPT)
    assert b.eval("document.getElementById('prompt').value") == PROMPT
    # Two adapters at once: a0 (checked by default) and a2 at scale 0.5.
    b.eval("""(() => { const rows = document.querySelectorAll('.adapter');
                 rows[2].children[0].checked = true; rows[2].children[2].value = '0.5'; return true; })()""")
    b.eval("document.getElementById('max_tokens').value = '12'")
    b.eval("document.getElementById('run').click()")
    b.wait("document.getElementById('status').textContent.startsWith('done')")
    base_text = b.eval("document.getElementById('base-output').textContent")
    mix_text = b.eval("document.getElementById('adapter-output').textContent")
    assert base_text.startswith(PROMPT) and len(base_text) > len(PROMPT)
    assert mix_text.startswith(PROMPT) and len(mix_text) > len(PROMPT)
    assert "a0×1 + a2×0.5" in b.eval("document.body.innerText")
    # The panes show what the API answers for the same settings.
    def api(adapters):
        r = requests.post(server.url + "/v1/completions", timeout=30, json={
            "model": "base", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "top_p": 1, "top_k": 0, "seed": 1,
            "echo": True, "adapters": adapters})
        return r.json()["choices"][0]["text"]
    assert base_text == api([])
    assert mix_text == api([{"name": "a0", "scale": 1}, {"name": "a2", "scale": 0.5}])
    assert base_text != mix_text

    shot = base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
    with open(SCREENSHOT, "wb") as f:
        f.write(shot)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 600
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 20, "the screenshot is blank"
    # Not one colour covering nearly everything.
    assert max(c for c, _ in colors) < 0.97 * image.size[0] * image.size[1]
