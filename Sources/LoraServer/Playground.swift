/// The playground page served at `/`: one static HTML file with its style
/// and script inline, nothing fetched from elsewhere. It lists the models
/// (GET /v1/models), lets you pick several adapters with scales, and streams
/// the base model and the chosen adapter mix side by side for the same
/// prompt, sampling settings and seed.
enum Playground {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>lora serve playground</title>
        <style>
          body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
          header { background: #243b6b; color: #fff; padding: 10px 18px; }
          header h1 { font-size: 18px; margin: 0; }
          main { padding: 14px 18px; display: grid; gap: 14px; grid-template-columns: 320px 1fr; }
          section { background: #fff; border-radius: 6px; padding: 12px; box-shadow: 0 1px 2px #0002; }
          label { display: block; margin: 6px 0 2px; font-weight: 600; font-size: 13px; }
          textarea { width: 100%; height: 90px; box-sizing: border-box; font: inherit; }
          input[type=number], input[type=text], input[type=password] { width: 100%; box-sizing: border-box; }
          .row { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
          .adapter { display: grid; grid-template-columns: 20px 1fr 70px; gap: 6px; align-items: center; margin: 3px 0; }
          button { margin-top: 10px; padding: 8px 16px; background: #2f6fd6; color: #fff; border: 0; border-radius: 4px;
                   font-size: 15px; cursor: pointer; }
          button:disabled { background: #8aa; }
          .panes { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
          .pane h2 { font-size: 15px; margin: 0 0 6px; }
          .out { white-space: pre-wrap; min-height: 220px; background: #fbfbfd; border: 1px solid #dde; padding: 8px;
                 font-family: ui-monospace, monospace; }
          .out .prompt { color: #777; }
          #status { color: #555; font-size: 13px; margin-top: 8px; min-height: 18px; }
        </style>
        </head>
        <body>
        <header><h1>lora serve — playground</h1></header>
        <main>
          <section>
            <label for="prompt">Prompt</label>
            <textarea id="prompt">Hello world</textarea>
            <label>Adapters (mixed on the right pane)</label>
            <div id="adapters"><em>loading…</em></div>
            <div class="row">
              <div><label for="max_tokens">max_tokens</label><input id="max_tokens" type="number" value="32" min="1"></div>
              <div><label for="temperature">temperature</label><input id="temperature" type="number" value="0" min="0" max="2" step="0.1"></div>
              <div><label for="top_p">top_p</label><input id="top_p" type="number" value="1" min="0.01" max="1" step="0.05"></div>
              <div><label for="top_k">top_k</label><input id="top_k" type="number" value="0" min="0"></div>
              <div><label for="seed">seed</label><input id="seed" type="number" value="1"></div>
              <div><label for="api_key">API key</label><input id="api_key" type="password" placeholder="(none)"></div>
            </div>
            <button id="run">Generate</button>
            <div id="status"></div>
          </section>
          <section class="panes">
            <div class="pane"><h2>Base model <span id="base-name"></span></h2><div class="out" id="base-output"></div></div>
            <div class="pane"><h2>With adapters <span id="mix-name"></span></h2><div class="out" id="adapter-output"></div></div>
          </section>
        </main>
        <script>
        "use strict";
        let base = null;
        const $ = (id) => document.getElementById(id);
        function headers() {
          const h = { "content-type": "application/json" };
          const key = $("api_key").value.trim();
          if (key) h["authorization"] = "Bearer " + key;
          return h;
        }
        async function loadModels() {
          const r = await fetch("/v1/models", { headers: headers() });
          const box = $("adapters");
          if (!r.ok) { box.textContent = "cannot list models (" + r.status + ")"; return; }
          const list = (await r.json()).data;
          base = list.find((m) => m.parent === null) || list[0];
          $("base-name").textContent = "(" + base.id + ")";
          box.textContent = "";
          list.filter((m) => m.parent !== null).forEach((m, i) => {
            const row = document.createElement("div");
            row.className = "adapter";
            row.innerHTML = '<input type="checkbox"><span></span><input type="number" step="0.1" value="1">';
            row.children[0].checked = i === 0;
            row.children[0].dataset.name = m.id;
            row.children[1].textContent = m.id;
            box.appendChild(row);
          });
          if (!box.children.length) box.textContent = "no adapters loaded";
        }
        function chosenAdapters() {
          return Array.from($("adapters").querySelectorAll(".adapter")).filter((r) => r.children[0].checked)
            .map((r) => ({ name: r.children[0].dataset.name, scale: parseFloat(r.children[2].value) || 0 }));
        }
        async function stream(out, adapters) {
          const prompt = $("prompt").value;
          out.textContent = "";
          const p = document.createElement("span");
          p.className = "prompt";
          p.textContent = prompt;
          out.appendChild(p);
          const body = {
            model: base.id, prompt, stream: true, adapters,
            max_tokens: parseInt($("max_tokens").value, 10), temperature: parseFloat($("temperature").value),
            top_p: parseFloat($("top_p").value), top_k: parseInt($("top_k").value, 10), seed: parseInt($("seed").value, 10),
          };
          const r = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
          if (!r.ok) { const e = await r.json(); throw new Error(e.error ? e.error.message : r.statusText); }
          const reader = r.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let i;
            while ((i = buffer.indexOf("\n\n")) >= 0) {
              const event = buffer.slice(0, i);
              buffer = buffer.slice(i + 2);
              if (!event.startsWith("data: ")) continue;
              const data = event.slice(6);
              if (data === "[DONE]") return;
              const chunk = JSON.parse(data);
              for (const c of chunk.choices) out.appendChild(document.createTextNode(c.text));
            }
          }
        }
        $("run").addEventListener("click", async () => {
          $("run").disabled = true;
          $("status").textContent = "generating…";
          const mix = chosenAdapters();
          $("mix-name").textContent = "(" + (mix.map((a) => a.name + "×" + a.scale).join(" + ") || "none") + ")";
          const t0 = performance.now();
          try {
            await Promise.all([stream($("base-output"), []), stream($("adapter-output"), mix)]);
            $("status").textContent = "done in " + Math.round(performance.now() - t0) + " ms";
          } catch (e) {
            $("status").textContent = "error: " + e.message;
          } finally {
            $("run").disabled = false;
          }
        });
        $("api_key").addEventListener("change", loadModels);
        loadModels();
        </script>
        </body>
        </html>
        """#
}
