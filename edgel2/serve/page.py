"""The page at ``GET /``: drop or pick an image, see the top-k as bars. One self-contained
HTML file (no scripts or styles from elsewhere: the server may have no network)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgel2: {{MODEL}}</title>
<style>
  body { font: 16px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; }
  #drop.over { background: #eef; }
  #preview { max-width: 8rem; image-rendering: pixelated; margin: 1rem auto; display: block; }
  .row { display: grid; grid-template-columns: 8rem 1fr 4rem; gap: .5rem; align-items: center; margin: .25rem 0; }
  .bar { background: #36c; height: 1rem; border-radius: 3px; }
  #error { color: #b00; }
  #unknown { background: #fe9; border-radius: 6px; padding: .5rem; }
  #unknown:empty { display: none; }
</style>
</head>
<body>
<h1>edgel2 <small>{{MODEL}}</small></h1>
<div id="drop">Drop an image here, or <label>pick one <input id="file" type="file" accept="image/*"></label></div>
<img id="preview" alt="">
<p id="status" role="status"></p>
<p id="error" role="alert"></p>
<p id="unknown" role="status"></p>
<div id="results"></div>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("file");
const results = document.getElementById("results"), status = document.getElementById("status");
const error = document.getElementById("error"), preview = document.getElementById("preview");
const unknown = document.getElementById("unknown");
async function classify(file) {
  results.replaceChildren(); error.textContent = ""; unknown.textContent = "";
  status.textContent = "classifying " + file.name + "...";
  preview.src = URL.createObjectURL(file);
  const form = new FormData(); form.append("file", file, file.name);
  try {
    const response = await fetch("/v1/classify?top_k=5", { method: "POST", body: form });
    const body = await response.json();
    const result = body.results ? body.results[0] : null;
    if (!response.ok || !result || result.error) {
      throw new Error((result && result.error) || body.error || response.statusText);
    }
    if (result.unknown) {
      unknown.textContent = "Unknown: this image looks like none of the classes (score "
        + result.unknown_score.toFixed(2) + "); the closest are below.";
    }
    for (const p of result.predictions) {
      const row = document.createElement("div"); row.className = "row prediction";
      const label = document.createElement("span"); label.className = "label"; label.textContent = p.label;
      const bar = document.createElement("div"); bar.className = "bar"; bar.style.width = (100 * p.probability) + "%";
      const value = document.createElement("span"); value.className = "probability";
      value.textContent = (100 * p.probability).toFixed(1) + " %";
      row.append(label, bar, value); results.append(row);
    }
    status.textContent = file.name;
  } catch (e) { status.textContent = ""; error.textContent = e.message; }
}
input.addEventListener("change", () => input.files[0] && classify(input.files[0]));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); });
</script>
</body>
</html>
"""
