"""The search server's one web page: a text box and an image drop zone, results as thumbnails with scores.

Self-contained (inline CSS and JS, no CDN), so it works offline.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>captchalab search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:15px system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
 h1{font-size:1.3em;margin:.2em 0} #info{color:#666;font-size:.85em;margin-bottom:1em}
 form{display:flex;gap:.5em;align-items:center;flex-wrap:wrap}
 input[type=text]{flex:1;min-width:12em;font-size:1.1em;padding:.35em .5em}
 input[type=number]{width:4.5em;padding:.3em} button{font-size:1em;padding:.35em 1em}
 #drop{border:2px dashed #aaa;border-radius:8px;padding:1em;margin:.8em 0;text-align:center;color:#666;cursor:pointer}
 #drop.over{border-color:#36c;background:#eef3ff} #status{min-height:1.3em;margin:.4em 0;color:#555}
 #status.err{color:#b00} #results{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
 figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:5px;background:#fafafa}
 figure img{width:100%;height:140px;object-fit:contain;background:#fff}
 figcaption{font-size:.75em;word-break:break-all} .score{font-weight:600;font-size:1.05em}
</style></head><body>
<h1>captchalab image search</h1><div id="info">loading…</div>
<form id="q"><input id="text" type="text" placeholder="describe a picture: 猫, 自行车, a red apple…" autofocus>
 k <input id="k" type="number" min="1" max="1000" value="20"><button>search</button></form>
<div id="drop">drop an image here, or click to choose one, to find similar images
 <input id="file" type="file" accept="image/*" hidden></div>
<div id="status"></div><div id="results"></div>
<script>
const $ = id => document.getElementById(id);
function status(text, bad) { $("status").textContent = text; $("status").className = bad ? "err" : ""; }
async function show(responsePromise) {
  status("searching…");
  try {
    const response = await responsePromise, body = await response.json();
    if (!response.ok) { status(body.error || ("HTTP " + response.status), true); return; }
    $("results").replaceChildren(...body.results.map(hit => {
      const fig = document.createElement("figure"), img = document.createElement("img");
      const cap = document.createElement("figcaption"), score = document.createElement("div");
      img.src = "/thumb?path=" + encodeURIComponent(hit.path); img.loading = "lazy"; img.title = hit.path;
      img.onclick = () => window.open("/thumb?size=512&path=" + encodeURIComponent(hit.path));
      score.className = "score"; score.textContent = hit.score.toFixed(3);
      cap.append(score, hit.path.split("/").slice(-2).join("/")); fig.append(img, cap); return fig;
    }));
    status(body.results.length + " results in " + body.took_ms.toFixed(1) + " ms");
  } catch (e) { status(String(e), true); }
}
$("q").onsubmit = e => {
  e.preventDefault(); const text = $("text").value.trim(); if (!text) return;
  show(fetch("/api/query?k=" + $("k").value + "&text=" + encodeURIComponent(text)));
};
function upload(file) {
  if (!file) return;
  show(fetch("/api/query?k=" + $("k").value + "&name=" + encodeURIComponent(file.name),
             {method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"}}));
}
const drop = $("drop");
drop.onclick = () => $("file").click(); $("file").onchange = () => upload($("file").files[0]);
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files[0]); };
fetch("/api/info").then(r => r.json()).then(i => {
  $("info").textContent = i.images + " images in " + i.root + " · model " + i.model_id + " (" + i.dim + "-d)" +
    (i.images >= i.ann_threshold ? " · approximate search" : " · exact search");
}).catch(() => { $("info").textContent = ""; });
</script></body></html>
"""
