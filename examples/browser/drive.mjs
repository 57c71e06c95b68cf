// Run the page in headless Chromium and classify images with it, from the command line:
//
//   node drive.mjs [--model FILE.onnx] IMAGE...
//
// Chromium is the system's (CHROMIUM, else /usr/bin/chromium), driven by playwright-core. The
// page and its files are served from this checkout by Playwright's request routing (no
// server, no network): /model.onnx is the --model file. One JSON line per image, as every
// edgel2 example prints; a bad image is one line on stderr and exit 1.
import { readFile } from "node:fs/promises";
import { extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const ORIGIN = "http://edgel2.localhost";
const TYPES = { ".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript",
                ".wasm": "application/wasm", ".onnx": "application/octet-stream" };

async function main(argv) {
  let model = join(ROOT, "models", "resnet18-int8.onnx");
  const images = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--model") model = argv[++i];
    else images.push(argv[i]);
  }
  if (!model || images.length === 0) {
    console.error("edgel2-browser: error: usage: run [--model FILE.onnx] IMAGE...");
    return 2;
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run"] });
  try {
    const page = await browser.newPage();
    await page.route(`${ORIGIN}/**`, async (route) => {
      const path = decodeURIComponent(new URL(route.request().url()).pathname);
      const file = path === "/model.onnx" ? model : normalize(join(ROOT, path));
      if (path !== "/model.onnx" && !file.startsWith(ROOT.endsWith(sep) ? ROOT : ROOT + sep)) {
        return route.fulfill({ status: 403 });
      }
      try {
        await route.fulfill({ body: await readFile(file), contentType: TYPES[extname(file)] ?? "application/octet-stream" });
      } catch {
        await route.fulfill({ status: 404 });
      }
    });
    await page.goto(`${ORIGIN}/examples/browser/index.html?model=/model.onnx`);
    const loaded = await page.evaluate(async () => {
      const { loadClassifier } = await import("./app.mjs");
      try { window.classifier = await loadClassifier("/model.onnx"); return null; }
      catch (e) { return e.message; }
    });
    if (loaded) {
      console.error(`edgel2-browser: error: cannot load ${model}: ${loaded.split("\n")[0]}`);
      return 1;
    }
    let failed = 0;
    for (const path of images) {
      let bytes;
      try { bytes = await readFile(path); } catch (e) {
        console.error(`edgel2-browser: error: ${path}: ${e.code === "ENOENT" ? "no such file" : e.message}`);
        failed = 1;
        continue;
      }
      const answer = await page.evaluate(async (base64) => {
        const { classifyBlob } = await import("./app.mjs");
        const data = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
        try { return await classifyBlob(window.classifier, new Blob([data])); }
        catch (e) { return { error: e.message || String(e) }; }
      }, bytes.toString("base64"));
      if (answer.error) {
        console.error(`edgel2-browser: error: ${path}: ${answer.error.split("\n")[0]}`);
        failed = 1;
      } else {
        console.log(JSON.stringify({ path, ...answer }));
      }
    }
    return failed;
  } finally {
    await browser.close();
  }
}

process.exitCode = await main(process.argv.slice(2));
