/* Classify images with an edgel2 .onnx file in C, through OpenVINO's C API (the openvino
 * wheel ships its headers and libopenvino_c), with the answer edgel2's Python runtime gives:
 * the metadata edgel2 wrote into the file (class names, input size, calibration, unknown
 * threshold), images decoded by libjpeg-turbo and libpng and turned upright by their EXIF
 * orientation, alpha composited over white and resized with Pillow's bilinear filter to the
 * integer (edgel2/runtime/preprocess.py, examples/js/edgel2.mjs).
 *
 *   classify [--model FILE.onnx] IMAGE...
 *
 * One JSON line per image: {"path", "label", "probabilities", "unknown_score", "unknown"}.
 * A bad model is one line on stderr and exit 1; a bad image one line, and the others go on.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <jpeglib.h>
#include <openvino/c/openvino.h>
#include <png.h>
#include <setjmp.h>

#define MAX_PIXELS (64L * 1024 * 1024) /* edgel2's decompression-bomb limit */
#define UNSMOOTH_FLOOR 0.01
#define PRECISION_BITS (32 - 8 - 2)

typedef struct {
    unsigned char *rgba; /* straight alpha, row-major */
    int width, height;
} Image;

typedef struct {
    cJSON *metadata;
    cJSON *class_names;
    int classes, width, height;
    double temperature, unsmooth, threshold; /* threshold NAN: the file has none */
    const char *logits_name;
    ov_core_t *core;
    ov_compiled_model_t *compiled;
    ov_infer_request_t *request;
} Classifier;

static char error_text[512];

static int fail(const char *message) {
    snprintf(error_text, sizeof error_text, "%s", message);
    return -1;
}

/* ---- the file's metadata: ModelProto.metadata_props (field 14), JSON values ---- */

static int varint(const unsigned char *p, size_t end, size_t *at, uint64_t *value) {
    *value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*at >= end) return -1;
        unsigned char byte = p[(*at)++];
        *value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) return 0;
    }
    return -1;
}

/* Calls visit(field, start, length) for each length-delimited field of one message. */
static int walk(const unsigned char *p, size_t start, size_t end,
                void (*visit)(void *, int, const unsigned char *, size_t), void *context) {
    size_t at = start;
    while (at < end) {
        uint64_t tag, length;
        if (varint(p, end, &at, &tag)) return -1;
        switch (tag & 7) {
        case 0: if (varint(p, end, &at, &length)) return -1; break;
        case 1: at += 8; break;
        case 5: at += 4; break;
        case 2:
            if (varint(p, end, &at, &length) || length > end - at) return -1;
            visit(context, (int)(tag >> 3), p + at, (size_t)length);
            at += length;
            break;
        default: return -1;
        }
    }
    return at == end ? 0 : -1;
}

typedef struct { const unsigned char *key, *value; size_t key_length, value_length; } Entry;

static void visit_entry(void *context, int field, const unsigned char *p, size_t length) {
    Entry *entry = context;
    if (field == 1) { entry->key = p; entry->key_length = length; }
    if (field == 2) { entry->value = p; entry->value_length = length; }
}

static void visit_model(void *context, int field, const unsigned char *p, size_t length) {
    if (field != 14) return;
    Entry entry = {0};
    if (walk(p, 0, length, visit_entry, &entry) || !entry.key) return;
    char *key = strndup((const char *)entry.key, entry.key_length);
    cJSON *value = cJSON_ParseWithLength((const char *)entry.value, entry.value_length);
    if (!value) value = cJSON_CreateString("");
    cJSON_AddItemToObject(context, key, value);
    free(key);
}

static cJSON *read_metadata(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail("cannot open the file"), NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *bytes = malloc(size > 0 ? (size_t)size : 1);
    size_t read = bytes ? fread(bytes, 1, (size_t)size, f) : 0;
    fclose(f);
    cJSON *metadata = cJSON_CreateObject();
    if (size <= 0 || read != (size_t)size || walk(bytes, 0, read, visit_model, metadata)) {
        free(bytes);
        cJSON_Delete(metadata);
        return fail("not an ONNX file"), NULL;
    }
    free(bytes);
    return metadata;
}

static double number_or(const cJSON *item, double otherwise) {
    return cJSON_IsNumber(item) ? item->valuedouble : otherwise;
}

/* ---- OpenVINO ---- */

static int ov_check(ov_status_e status, const char *what) {
    if (status == OK) return 0;
    snprintf(error_text, sizeof error_text, "%s: %s", what, ov_get_last_err_msg());
    return -1;
}

static int load_classifier(Classifier *c, const char *path) {
    memset(c, 0, sizeof *c);
    if (!(c->metadata = read_metadata(path))) return -1;
    c->class_names = cJSON_GetObjectItem(c->metadata, "class_names");
    cJSON *input = cJSON_GetObjectItem(c->metadata, "input");
    cJSON *shape = cJSON_GetObjectItem(input, "shape");
    if (!cJSON_IsArray(c->class_names) || cJSON_GetArraySize(shape) != 4)
        return fail("no edgel2 metadata (class_names, input): export it with edgel2");
    c->classes = cJSON_GetArraySize(c->class_names);
    c->height = (int)number_or(cJSON_GetArrayItem(shape, 1), 0);
    c->width = (int)number_or(cJSON_GetArrayItem(shape, 2), 0);
    c->temperature = number_or(cJSON_GetObjectItem(c->metadata, "temperature"), 1.0);
    c->unsmooth = number_or(cJSON_GetObjectItem(c->metadata, "unsmooth"), 0.0);
    c->threshold = number_or(cJSON_GetObjectItem(cJSON_GetObjectItem(c->metadata, "unknown"),
                                                  "threshold"), NAN);
    cJSON *output = cJSON_GetObjectItem(cJSON_GetObjectItem(c->metadata, "output"), "name");
    c->logits_name = cJSON_IsString(output) ? output->valuestring : "logits";
    ov_model_t *model = NULL;
    int bad = ov_check(ov_core_create(&c->core), "OpenVINO") ||
              ov_check(ov_core_read_model(c->core, path, NULL, &model), "OpenVINO cannot read it") ||
              ov_check(ov_core_compile_model(c->core, model, "CPU", 0, &c->compiled),
                       "OpenVINO cannot compile it") ||
              ov_check(ov_compiled_model_create_infer_request(c->compiled, &c->request), "OpenVINO");
    if (model) ov_model_free(model);
    return bad ? -1 : 0;
}

static void free_classifier(Classifier *c) {
    if (c->request) ov_infer_request_free(c->request);
    if (c->compiled) ov_compiled_model_free(c->compiled);
    if (c->core) ov_core_free(c->core);
    cJSON_Delete(c->metadata);
}

/* ---- decoding: JPEG (libjpeg-turbo), PNG (libpng); EXIF orientation ---- */

/* The orientation (1-8) in a TIFF-structured EXIF block, 1 when it has none. */
static int exif_orientation(const unsigned char *p, size_t n) {
    if (n < 8) return 1;
    int little = p[0] == 'I';
    #define U16(at) (little ? p[at] | p[(at) + 1] << 8 : p[at] << 8 | p[(at) + 1])
    #define U32(at) (little ? (uint32_t)U16(at) | (uint32_t)U16((at) + 2) << 16 \
                            : (uint32_t)U16(at) << 16 | (uint32_t)U16((at) + 2))
    uint32_t ifd = U32(4);
    if (ifd + 2 > n) return 1;
    int entries = U16(ifd);
    for (int i = 0; i < entries; i++) {
        size_t at = ifd + 2 + 12 * (size_t)i;
        if (at + 12 > n) break;
        if (U16(at) == 0x0112) {
            int value = U16(at + 8);
            return value >= 1 && value <= 8 ? value : 1;
        }
    }
    #undef U16
    #undef U32
    return 1;
}

struct jpeg_failure { struct jpeg_error_mgr manager; jmp_buf jump; };

static void jpeg_fail(j_common_ptr info) {
    struct jpeg_failure *failure = (struct jpeg_failure *)info->err;
    char message[JMSG_LENGTH_MAX];
    info->err->format_message(info, message);
    snprintf(error_text, sizeof error_text, "not a readable JPEG (%s)", message);
    longjmp(failure->jump, 1);
}

/* libjpeg's warnings (a truncated file, ...) go unprinted: the error line says what failed */
static void jpeg_quiet(j_common_ptr info, int level) { (void)info; (void)level; }

static int decode_jpeg(FILE *f, Image *image, int *orientation) {
    struct jpeg_decompress_struct info;
    struct jpeg_failure failure;
    unsigned char *rgb = NULL;
    info.err = jpeg_std_error(&failure.manager);
    failure.manager.error_exit = jpeg_fail;
    failure.manager.emit_message = jpeg_quiet;
    if (setjmp(failure.jump)) {
        jpeg_destroy_decompress(&info);
        free(rgb);
        return -1;
    }
    jpeg_create_decompress(&info);
    jpeg_stdio_src(&info, f);
    jpeg_save_markers(&info, JPEG_APP0 + 1, 0xffff);
    jpeg_read_header(&info, TRUE);
    for (jpeg_saved_marker_ptr m = info.marker_list; m; m = m->next)
        if (m->data_length > 6 && !memcmp(m->data, "Exif\0\0", 6))
            *orientation = exif_orientation(m->data + 6, m->data_length - 6);
    if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&info);
        return fail("a CMYK JPEG (convert it to RGB)");
    }
    if ((long)info.image_width * info.image_height > MAX_PIXELS) {
        jpeg_destroy_decompress(&info);
        return fail("over 64 Mpx");
    }
    info.out_color_space = JCS_RGB;
    jpeg_start_decompress(&info);
    size_t row = (size_t)info.output_width * 3;
    rgb = malloc(row * info.output_height);
    while (info.output_scanline < info.output_height) {
        JSAMPROW line = rgb + row * info.output_scanline;
        jpeg_read_scanlines(&info, &line, 1);
    }
    image->width = (int)info.output_width;
    image->height = (int)info.output_height;
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    image->rgba = malloc((size_t)image->width * image->height * 4);
    for (size_t i = 0, n = (size_t)image->width * image->height; i < n; i++) {
        memcpy(image->rgba + 4 * i, rgb + 3 * i, 3);
        image->rgba[4 * i + 3] = 255;
    }
    free(rgb);
    return 0;
}

/* libpng's own messages go unprinted: its error returns here, and one line says it */
static void png_fail(png_structp reader, png_const_charp message) {
    (void)message;
    png_longjmp(reader, 1);
}

static void png_quiet(png_structp reader, png_const_charp message) { (void)reader; (void)message; }

static int decode_png(FILE *f, Image *image, int *orientation) {
    png_structp reader = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, png_fail, png_quiet);
    png_infop info = png_create_info_struct(reader);
    unsigned char **rows = NULL;
    if (setjmp(png_jmpbuf(reader))) {
        png_destroy_read_struct(&reader, &info, NULL);
        free(rows);
        free(image->rgba);
        image->rgba = NULL;
        return fail("not a readable PNG");
    }
    png_init_io(reader, f);
    png_read_info(reader, info);
    png_uint_32 width = png_get_image_width(reader, info), height = png_get_image_height(reader, info);
    if ((long)width * height > MAX_PIXELS) {
        png_destroy_read_struct(&reader, &info, NULL);
        return fail("over 64 Mpx");
    }
    /* Pillow's conversions: palettes expanded (their tRNS to alpha; a tRNS colour key of a
       grey or RGB image is ignored, as Pillow's RGB conversion ignores it), low bit depths
       to 8, 16 bits to the high byte, grey replicated, no gamma applied */
    if (png_get_color_type(reader, info) == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(reader);
        if (png_get_valid(reader, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(reader);
    }
    png_set_expand_gray_1_2_4_to_8(reader);
    png_set_strip_16(reader);
    png_set_gray_to_rgb(reader);
    png_set_add_alpha(reader, 0xff, PNG_FILLER_AFTER);
    png_set_interlace_handling(reader);
    png_read_update_info(reader, info);
    image->width = (int)width;
    image->height = (int)height;
    image->rgba = malloc((size_t)width * height * 4);
    rows = malloc(sizeof *rows * height);
    for (png_uint_32 y = 0; y < height; y++) rows[y] = image->rgba + (size_t)y * width * 4;
    png_read_image(reader, rows);
    png_read_end(reader, info);
    png_uint_32 exif_length = 0;
    png_bytep exif = NULL;
    if (png_get_eXIf_1(reader, info, &exif_length, &exif)) *orientation = exif_orientation(exif, exif_length);
    png_destroy_read_struct(&reader, &info, NULL);
    free(rows);
    return 0;
}

/* The EXIF orientation applied, as ImageOps.exif_transpose does. */
static void make_upright(Image *image, int orientation) {
    if (orientation <= 1) return;
    int w = image->width, h = image->height, swap = orientation >= 5;
    int W = swap ? h : w, H = swap ? w : h;
    unsigned char *out = malloc((size_t)w * h * 4);
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            int sx, sy;  /* the source pixel of the upright pixel (x, y) */
            switch (orientation) {
            case 2: sx = w - 1 - x; sy = y; break;
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;
            case 4: sx = x; sy = h - 1 - y; break;
            case 5: sx = y; sy = x; break;
            case 6: sx = y; sy = h - 1 - x; break;
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;
            default: sx = w - 1 - y; sy = x; break;  /* 8 */
            }
            memcpy(out + ((size_t)y * W + x) * 4, image->rgba + ((size_t)sy * w + sx) * 4, 4);
        }
    }
    free(image->rgba);
    image->rgba = out;
    image->width = W;
    image->height = H;
}

static int load_image(const char *path, Image *image) {
    memset(image, 0, sizeof *image);
    FILE *f = fopen(path, "rb");
    if (!f) return fail("no such file");
    unsigned char magic[8] = {0};
    size_t n = fread(magic, 1, 8, f);
    rewind(f);
    int orientation = 1, status;
    if (n >= 3 && magic[0] == 0xff && magic[1] == 0xd8) status = decode_jpeg(f, image, &orientation);
    else if (n == 8 && !memcmp(magic, "\x89PNG\r\n\x1a\n", 8)) status = decode_png(f, image, &orientation);
    else status = fail("not a JPEG or PNG image (this example reads those two)");
    fclose(f);
    if (!status) make_upright(image, orientation);
    return status;
}

/* ---- edgel2's image policy: alpha over white, Pillow's bilinear resize ---- */

static unsigned char over_white(unsigned value, unsigned alpha) {
    unsigned t = 255 * (255 - alpha) + value * alpha + 128;
    return (unsigned char)(((t >> 8) + t) >> 8);
}

/* One pass of Pillow's bilinear filter along an axis (libImaging/Resample.c). */
static void resample(const unsigned char *in, unsigned char *out, int in_size, int out_size,
                     int lines, size_t in_step, size_t in_line, size_t out_step, size_t out_line) {
    double scale = (double)in_size / out_size, filter_scale = scale < 1 ? 1 : scale;
    double support = filter_scale;
    int taps = (int)ceil(support) * 2 + 1;
    int *bounds = malloc(sizeof(int) * 2 * out_size);
    int32_t *weights = calloc((size_t)out_size * taps, sizeof(int32_t));
    double *w = malloc(sizeof(double) * taps);
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, total = 0;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            double d = fabs((x + xmin - center + 0.5) * (1.0 / filter_scale));
            w[x] = d < 1 ? 1 - d : 0;
            total += w[x];
        }
        for (int x = 0; x < xmax; x++) {
            double k = total != 0 ? w[x] / total : w[x];
            weights[(size_t)xx * taps + x] = (int32_t)(k < 0 ? -0.5 + k * (1 << PRECISION_BITS)
                                                             : 0.5 + k * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    for (int line = 0; line < lines; line++) {
        for (int xx = 0; xx < out_size; xx++) {
            for (int c = 0; c < 3; c++) {
                int sum = 1 << (PRECISION_BITS - 1);
                for (int x = 0; x < bounds[2 * xx + 1]; x++)
                    sum += in[line * in_line + (size_t)(bounds[2 * xx] + x) * in_step + c] *
                           weights[(size_t)xx * taps + x];
                sum >>= PRECISION_BITS;
                out[line * out_line + (size_t)xx * out_step + c] =
                    (unsigned char)(sum < 0 ? 0 : sum > 255 ? 255 : sum);
            }
        }
    }
    free(bounds);
    free(weights);
    free(w);
}

/* Upright RGBA -> the model's uint8 RGB [height][width][3]: the width pass, then the height. */
static unsigned char *to_model_input(const Image *image, int width, int height) {
    size_t n = (size_t)image->width * image->height;
    unsigned char *rgb = malloc(n * 3);
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) rgb[3 * i + c] = over_white(image->rgba[4 * i + c], image->rgba[4 * i + 3]);
    int w = image->width, h = image->height;
    if (w != width) {
        unsigned char *next = malloc((size_t)width * h * 3);
        resample(rgb, next, w, width, h, 3, (size_t)w * 3, 3, (size_t)width * 3);
        free(rgb);
        rgb = next;
        w = width;
    }
    if (h != height) {
        unsigned char *next = malloc((size_t)w * height * 3);
        resample(rgb, next, h, height, w, (size_t)w * 3, 3, (size_t)w * 3, 3);
        free(rgb);
        rgb = next;
    }
    return rgb;
}

/* ---- one image: run it, calibrate, print a JSON line ---- */

static int classify(Classifier *c, const char *path) {
    Image image;
    if (load_image(path, &image)) return -1;
    unsigned char *pixels = to_model_input(&image, c->width, c->height);
    free(image.rgba);
    int64_t dims[4] = {1, c->height, c->width, 3};
    ov_shape_t shape;
    ov_tensor_t *input = NULL, *logits = NULL, *score = NULL;
    float *z = NULL, *s = NULL;
    int status = ov_check(ov_shape_create(4, dims, &shape), "OpenVINO");
    if (!status) {
        status = ov_check(ov_tensor_create_from_host_ptr(U8, shape, pixels, &input), "OpenVINO") ||
                 ov_check(ov_infer_request_set_input_tensor(c->request, input), "OpenVINO") ||
                 ov_check(ov_infer_request_infer(c->request), "OpenVINO cannot run it") ||
                 ov_check(ov_infer_request_get_tensor(c->request, c->logits_name, &logits),
                          "no logits output") ||
                 ov_check(ov_tensor_data(logits, (void **)&z), "OpenVINO");
        ov_shape_free(&shape);
    }
    if (!status) {
        double *p = malloc(sizeof(double) * c->classes), top = -INFINITY, total = 0;
        for (int i = 0; i < c->classes; i++) top = fmax(top, z[i] / c->temperature);
        for (int i = 0; i < c->classes; i++) total += p[i] = exp(z[i] / c->temperature - top);
        for (int i = 0; i < c->classes; i++) p[i] /= total;
        if (c->unsmooth) {
            total = 0;
            for (int i = 0; i < c->classes; i++)
                total += p[i] = fmax(p[i] - c->unsmooth / c->classes, UNSMOOTH_FLOOR * p[i]);
            for (int i = 0; i < c->classes; i++) p[i] /= total;
        }
        int best = 0;
        for (int i = 1; i < c->classes; i++) if (p[i] > p[best]) best = i;
        cJSON *answer = cJSON_CreateObject();
        cJSON_AddStringToObject(answer, "path", path);
        cJSON_AddStringToObject(answer, "label", cJSON_GetArrayItem(c->class_names, best)->valuestring);
        cJSON_AddItemToObject(answer, "probabilities", cJSON_CreateDoubleArray(p, c->classes));
        if (ov_infer_request_get_tensor(c->request, "unknown_score", &score) == OK &&
            ov_tensor_data(score, (void **)&s) == OK) {
            cJSON_AddNumberToObject(answer, "unknown_score", s[0]);
            if (isnan(c->threshold)) cJSON_AddNullToObject(answer, "unknown");
            else cJSON_AddBoolToObject(answer, "unknown", s[0] > c->threshold);
        }
        char *line = cJSON_PrintUnformatted(answer);
        puts(line);
        free(line);
        cJSON_Delete(answer);
        free(p);
    }
    if (score) ov_tensor_free(score);
    if (logits) ov_tensor_free(logits);
    if (input) ov_tensor_free(input);
    free(pixels);
    return status ? -1 : 0;
}

int main(int argc, char **argv) {
    const char *model = EDGEL2_DEFAULT_MODEL;
    int first = 1;
    if (argc > 2 && !strcmp(argv[1], "--model")) { model = argv[2]; first = 3; }
    if (first >= argc) {
        fprintf(stderr, "edgel2-c: error: usage: run [--model FILE.onnx] IMAGE...\n");
        return 2;
    }
    Classifier classifier;
    if (load_classifier(&classifier, model)) {
        fprintf(stderr, "edgel2-c: error: cannot load %s: %s\n", model, error_text);
        free_classifier(&classifier);
        return 1;
    }
    int failed = 0;
    for (int i = first; i < argc; i++) {
        if (classify(&classifier, argv[i])) {
            char *newline = strchr(error_text, '\n');
            if (newline) *newline = 0;
            fprintf(stderr, "edgel2-c: error: %s: %s\n", argv[i], error_text);
            failed = 1;
        }
        fflush(stdout);
    }
    free_classifier(&classifier);
    return failed;
}
