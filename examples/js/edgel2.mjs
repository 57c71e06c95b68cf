// edgel2's image policy and output maths in plain JavaScript, for Node and the browser: what
// edgel2.runtime does in Python (edgel2/runtime/preprocess.py, edgel2/calibration/apply.py),
// step for step and to the same integer, so a port gives the runtime's answer.
//
//   readOnnxMetadata(bytes)            the metadata edgel2 wrote into an .onnx file
//   modelInfo(bytes)                   {metadata, size}, or an error for a non-edgel2 file
//   toModelInput(rgba, w, h, W, H)     RGBA pixels -> uint8 RGB [H, W, 3] the model reads
//   probabilities(logits, metadata)    raw logits -> the file's calibrated probabilities
//   answerOf(outputs, metadata)        a session's outputs for one image -> its answer
//
// No dependencies: decoding the image file (and turning it upright by its EXIF orientation) is
// the app's job, with its platform's decoder.

/** The metadata_props of an ONNX ModelProto, each value JSON-decoded (edgel2 writes JSON). */
export function readOnnxMetadata(bytes) {
  const props = {};
  for (const [field, value] of protobufFields(bytes, 0, bytes.length)) {
    if (field !== 14) continue;  // ModelProto.metadata_props: StringStringEntryProto
    let key = "", text = "";
    for (const [f, v] of protobufFields(bytes, value.start, value.end)) {
      const s = new TextDecoder().decode(bytes.subarray(v.start, v.end));
      if (f === 1) key = s; else if (f === 2) text = s;
    }
    try { props[key] = JSON.parse(text); } catch { props[key] = text; }
  }
  return props;
}

// The top-level fields of one protobuf message: [field number, {start, end}] for the
// length-delimited ones (the only kind read here); varints and fixed-width ones are skipped.
function* protobufFields(bytes, start, end) {
  let at = start;
  const varint = () => {
    let value = 0, scale = 1, byte;
    do {
      if (at >= end) throw new Error("not an ONNX file (a truncated protobuf)");
      byte = bytes[at++];
      value += (byte & 0x7f) * scale;
      scale *= 128;
    } while (byte & 0x80);
    return value;
  };
  while (at < end) {
    const tag = varint(), field = Math.floor(tag / 8), wire = tag % 8;
    if (wire === 0) varint();
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      const length = varint(), from = at;
      at += length;
      if (at > end) throw new Error("not an ONNX file (a field runs past its message)");
      yield [field, { start: from, end: at }];
    } else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
  }
}

/**
 * Upright RGBA pixels (width x height x 4, straight alpha) -> the model's uint8 RGB input
 * [outHeight, outWidth, 3]: alpha composited over white, then Pillow's bilinear resize.
 */
export function toModelInput(rgba, width, height, outWidth, outHeight) {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    const alpha = rgba[i + 3];
    for (let c = 0; c < 3; c++) rgb[j + c] = blendOverWhite(rgba[i + c], alpha);
  }
  if (width === outWidth && height === outHeight) return rgb;
  return resizeBilinear(rgb, width, height, outWidth, outHeight);
}

// Pillow's Image.paste(image, mask=alpha) onto white: DIV255(white*(255-a) + pixel*a), the
// rounded division by 255 of libImaging/Paste.c.
function blendOverWhite(value, alpha) {
  const t = 255 * (255 - alpha) + value * alpha + 128;
  return ((t >> 8) + t) >> 8;
}

// Pillow's bilinear filter (libImaging/Resample.c): a triangle widened by the scale factor
// when shrinking (so it antialiases), coefficients in 22-bit fixed point, the horizontal pass
// rounded to uint8 before the vertical one.
const PRECISION_BITS = 32 - 8 - 2;

function coefficients(inSize, outSize) {
  const scale = inSize / outSize, filterScale = Math.max(scale, 1);
  const support = filterScale;  // the bilinear filter's support (1) times the scale
  const taps = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), weights = new Int32Array(outSize * taps);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = new Float64Array(count);
    let total = 0;
    for (let x = 0; x < count; x++) {
      w[x] = Math.max(0, 1 - Math.abs((x + xmin - center + 0.5) / filterScale));
      total += w[x];
    }
    for (let x = 0; x < count; x++) {
      const k = total !== 0 ? w[x] / total : w[x];
      weights[xx * taps + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS)
                                                : 0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = count;
  }
  return { bounds, weights, taps };
}

function clip8(sum) {
  return Math.min(255, Math.max(0, sum >> PRECISION_BITS));
}

// One pass along an axis: `stride` steps between neighbours along it, `lines`/`lineStride`
// walk the other axis; every pixel has 3 channels.
function resamplePass(src, dst, inSize, outSize, lines, inStep, inLine, outStep, outLine) {
  const { bounds, weights, taps } = coefficients(inSize, outSize);
  for (let line = 0; line < lines; line++) {
    for (let xx = 0; xx < outSize; xx++) {
      const xmin = bounds[xx * 2], count = bounds[xx * 2 + 1];
      for (let c = 0; c < 3; c++) {
        let sum = 1 << (PRECISION_BITS - 1);
        for (let x = 0; x < count; x++) {
          sum += src[line * inLine + (xmin + x) * inStep + c] * weights[xx * taps + x];
        }
        dst[line * outLine + xx * outStep + c] = clip8(sum);
      }
    }
  }
}

/** Pillow's Image.resize(..., BILINEAR) of uint8 RGB pixels, to the same integer. */
export function resizeBilinear(rgb, width, height, outWidth, outHeight) {
  let pixels = rgb, w = width;
  if (outWidth !== width) {
    const next = new Uint8Array(outWidth * height * 3);
    resamplePass(pixels, next, width, outWidth, height, 3, width * 3, 3, outWidth * 3);
    pixels = next;
    w = outWidth;
  }
  if (outHeight !== height) {
    const next = new Uint8Array(w * outHeight * 3);
    resamplePass(pixels, next, height, outHeight, w, w * 3, 3, w * 3, 3);
    pixels = next;
  }
  return pixels;
}

/**
 * The file's calibrated probabilities of one image's logits: softmax(logits / temperature),
 * then, when the file has `unsmooth` (a label-smoothing rate a), max(q - a/classes, 0.01 q)
 * renormalized (edgel2.calibration.calibrated_probabilities).
 */
export function probabilities(logits, metadata) {
  const temperature = metadata.temperature ?? 1, unsmooth = metadata.unsmooth ?? 0;
  const scaled = Array.from(logits, (z) => z / temperature);
  const top = Math.max(...scaled);
  let q = scaled.map((z) => Math.exp(z - top));
  const total = q.reduce((a, b) => a + b, 0);
  q = q.map((v) => v / total);
  if (unsmooth) {
    q = q.map((v) => Math.max(v - unsmooth / q.length, UNSMOOTH_FLOOR * v));
    const sum = q.reduce((a, b) => a + b, 0);
    q = q.map((v) => v / sum);
  }
  return q;
}

const UNSMOOTH_FLOOR = 0.01;

/** The model's input side(s) from the metadata: [width, height]. */
export function inputSize(metadata) {
  const [, height, width] = metadata.input.shape;
  return [width, height];
}

/** An .onnx file's edgel2 metadata and input size; an Error when edgel2 did not write it. */
export function modelInfo(bytes) {
  const metadata = readOnnxMetadata(bytes);
  if (!Array.isArray(metadata.class_names) || !metadata.input) {
    throw new Error("no edgel2 metadata (class_names, input): export the model with edgel2");
  }
  return { metadata, size: inputSize(metadata) };
}

/**
 * One image's answer from an ONNX Runtime session's outputs (Node or web):
 * {label, probabilities, unknown_score, unknown}, the last two when the file has the score.
 */
export function answerOf(outputs, metadata) {
  const p = probabilities(outputs[metadata.output?.name ?? "logits"].data, metadata);
  const answer = { label: metadata.class_names[p.indexOf(Math.max(...p))], probabilities: p };
  const score = outputs.unknown_score?.data[0];
  if (score !== undefined) {
    answer.unknown_score = score;
    const threshold = metadata.unknown?.threshold;
    answer.unknown = threshold === undefined ? null : score > threshold;
  }
  return answer;
}
