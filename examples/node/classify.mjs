// Classify images with an edgel2 .onnx file in Node: onnxruntime-node runs the model, sharp
// decodes the image (libvips: JPEG, PNG, WebP, GIF, TIFF; turned upright by its EXIF
// orientation), and ../js/edgel2.mjs does what edgel2.runtime does in Python (alpha over white,
// Pillow's bilinear resize, the file's calibration), so the answer is the runtime's.
//
//   node classify.mjs [--model FILE.onnx] IMAGE...
//
// One JSON line per image: {"path", "label", "probabilities" (in the model's class order),
// "unknown_score", "unknown"}. A bad model or image is one line on stderr and exit 1.
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import ort from "onnxruntime-node";
import sharp from "sharp";
import { answerOf, modelInfo, toModelInput } from "../js/edgel2.mjs";

const DEFAULT_MODEL = fileURLToPath(new URL("../../models/resnet18-int8.onnx", import.meta.url));

export async function loadClassifier(path) {
  const bytes = await readFile(path);
  const info = modelInfo(bytes);
  return { session: await ort.InferenceSession.create(bytes), ...info };
}

export async function classify({ session, metadata, size }, path) {
  const { data, info } = await sharp(path, { limitInputPixels: 64 * 1024 * 1024 })
    .rotate()                    // the EXIF orientation, like ImageOps.exif_transpose
    .toColourspace("srgb").ensureAlpha()
    .raw().toBuffer({ resolveWithObject: true });
  const [width, height] = size;
  const pixels = toModelInput(data, info.width, info.height, width, height);
  const feeds = { [session.inputNames[0]]: new ort.Tensor("uint8", pixels, [1, height, width, 3]) };
  return { path, ...answerOf(await session.run(feeds), metadata) };
}

async function main(argv) {
  let model = DEFAULT_MODEL;
  const images = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--model") model = argv[++i];
    else if (argv[i] === "-h" || argv[i] === "--help") {
      console.log("usage: run [--model FILE.onnx] IMAGE...  (one JSON line per image)");
      return 0;
    } else images.push(argv[i]);
  }
  if (!model || images.length === 0) {
    console.error("edgel2-node: error: usage: run [--model FILE.onnx] IMAGE...");
    return 2;
  }
  let classifier;
  try {
    classifier = await loadClassifier(model);
  } catch (e) {
    console.error(`edgel2-node: error: cannot load ${model}: ${String(e.message).split("\n")[0]}`);
    return 1;
  }
  let failed = 0;
  for (const path of images) {
    try {
      console.log(JSON.stringify(await classify(classifier, path)));
    } catch (e) {
      console.error(`edgel2-node: error: ${path}: ${String(e.message).split("\n")[0]}`);
      failed = 1;
    }
  }
  return failed;
}

process.exitCode = await main(process.argv.slice(2));
