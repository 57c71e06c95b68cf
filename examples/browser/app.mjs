// Classify images in the browser with an edgel2 .onnx file: ONNX Runtime Web (WebAssembly)
// runs the model, the browser decodes the image, and ../js/edgel2.mjs does what
// edgel2.runtime does in Python (Pillow's bilinear resize, the file's calibration).
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { answerOf, modelInfo, toModelInput } from "../js/edgel2.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
// several threads need a cross-origin-isolated page (SharedArrayBuffer); one works anywhere
ort.env.wasm.numThreads = 1;

/** The model at `url` (or its bytes) and the metadata edgel2 wrote into it. */
export async function loadClassifier(url) {
  const bytes = url instanceof Uint8Array ? url : new Uint8Array(await (await fetch(url)).arrayBuffer());
  const info = modelInfo(bytes);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  return { session, ...info };
}

// The browser's decoder, upright by EXIF, drawn over an opaque white canvas: the canvas
// composites with premultiplied alpha rounded as Pillow's paste over white rounds it, and an
// opaque canvas reads back exactly. No colour conversion (Pillow applies none either).
async function uprightPixels(blob) {
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image",
                                                 colorSpaceConversion: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { alpha: false, colorSpace: "srgb" });
  context.fillStyle = "#fff";
  context.fillRect(0, 0, bitmap.width, bitmap.height);
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  return { rgba: data, width: bitmap.width, height: bitmap.height };
}

/** One image's answer: {label, probabilities, unknown_score, unknown}. */
export async function classifyBlob({ session, metadata, size }, blob) {
  const { rgba, width, height } = await uprightPixels(blob);
  const [w, h] = size;
  const pixels = toModelInput(rgba, width, height, w, h);
  const feeds = { [session.inputNames[0]]: new ort.Tensor("uint8", pixels, [1, h, w, 3]) };
  return answerOf(await session.run(feeds), metadata);
}
