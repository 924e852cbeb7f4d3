/* One streaming call of Mimi's transformer, every layer, in one C call (csmlab/codec/native.py says why).

   Each layer is moshi's StreamingTransformerLayer on the few new tokens of one stream:
     x += scale1 * out_proj(attention(rope(in_proj(norm1(x)))))   against the ring cache of keys and values
     x += scale2 * linear2(gelu(linear1(norm2(x))))
   in fp32, the products and sums in another order than PyTorch's (so not bit-identical to moshi).

   Built by native.py with the system's C compiler for this processor (-O3 -march=native); with
   -fopenmp where PyTorch's own libgomp is loaded, so that the products and the heads split across
   PyTorch's threads, never a second pool. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_STEPS 4  /* tokens per call: a weight read, as few rows */
#define SIDE 8       /* weight rows read side by side: that many memory streams in flight */
#define AHEAD 256    /* how far ahead in a weight row to prefetch, in floats */
#define PARAMS 11    /* pointers per layer, in native.py's order */
#define MAX_CAPACITY 4096  /* ring-cache slots: each attention head keeps a row of weights per query on its stack */

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* any float address */


static inline float lanes_sum(v16 a) {
  float s = 0;
  for (int l = 0; l < 16; l++) s += a[l];
  return s;
}

/* y[r, o] = sum_i x[r, i] w[o, i] for r < R, o in [lo, hi): w [out, in] row-major, in % 16 == 0. */
static inline __attribute__((always_inline)) void
rows_times(const int R, const float *x, const float *w, float *y, int out, int in, int lo, int hi) {
  for (int o0 = lo; o0 < hi; o0 += SIDE) {
    const int n = hi - o0 < SIDE ? hi - o0 : SIDE;
    v16 acc[MAX_STEPS][SIDE] = {{{0}}};
    const float *block = w + (size_t)o0 * in;
    for (int i = 0; i < in; i += 16) {
      v16 xs[MAX_STEPS];
      for (int r = 0; r < R; r++) xs[r] = *(const v16u *)(x + (size_t)r * in + i);
      for (int k = 0; k < SIDE && k < n; k++) {
        const float *p = block + (size_t)k * in + i;
        __builtin_prefetch(p + AHEAD);
        v16 v = *(const v16u *)p;
        for (int r = 0; r < R; r++) acc[r][k] += v * xs[r];
      }
    }
    for (int k = 0; k < n; k++)
      for (int r = 0; r < R; r++) y[(size_t)r * out + o0 + k] = lanes_sum(acc[r][k]);
  }
}

static void rows_part(int rows, const float *x, const float *w, float *y, int out, int in, int lo, int hi) {
  switch (rows) {  /* a constant R for each: the compiler unrolls the loops over rows */
    case 1: rows_times(1, x, w, y, out, in, lo, hi); break;
    case 2: rows_times(2, x, w, y, out, in, lo, hi); break;
    case 3: rows_times(3, x, w, y, out, in, lo, hi); break;
    default: rows_times(4, x, w, y, out, in, lo, hi); break;
  }
}

/* y [rows, out] = x [rows, in] @ w.T, the weight's rows split across `threads` threads in blocks of SIDE. */
static void linear(int threads, int rows, const float *x, const float *w, float *y, int out, int in) {
  if (threads <= 1) {
    rows_part(rows, x, w, y, out, in, 0, out);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const int n = omp_get_num_threads(), id = omp_get_thread_num(), blocks = (out + SIDE - 1) / SIDE;
    const int lo = (int)((long)blocks * id / n) * SIDE, hi = (int)((long)blocks * (id + 1) / n) * SIDE;
    rows_part(rows, x, w, y, out, in, lo, hi < out ? hi : out);
  }
#endif
}

/* The sizes this build was made for, which native.py checks against its own on loading. */
int limits(int which) { return which == 0 ? MAX_STEPS : which == 1 ? PARAMS : MAX_CAPACITY; }

/* y = LayerNorm(x) over each of `steps` rows of `dim` */
static void norm(const float *x, const float *weight, const float *bias, float *y, int steps, int dim, float eps) {
  for (int t = 0; t < steps; t++) {
    const float *r = x + (size_t)t * dim;
    float *o = y + (size_t)t * dim, mean = 0, var = 0;
    for (int c = 0; c < dim; c++) mean += r[c];
    mean /= dim;
    for (int c = 0; c < dim; c++) var += (r[c] - mean) * (r[c] - mean);
    const float inv = 1.0f / sqrtf(var / dim + eps);
    for (int c = 0; c < dim; c++) o[c] = (r[c] - mean) * inv * weight[c] + bias[c];
  }
}

/* x += scale * update, row by row (LayerScale on the residual branch) */
static void add_scaled(float *x, const float *update, const float *scale, int steps, int dim) {
  for (int t = 0; t < steps; t++)
    for (int c = 0; c < dim; c++) x[(size_t)t * dim + c] += scale[c] * update[(size_t)t * dim + c];
}

/* erf as a ratio of polynomials in x (odd over even), clamped to [-4, 4] where erf is +-1 in fp32:
   the coefficients of Eigen's generic_fast_erf_float (also XLA's). Plain arithmetic, so it vectorises;
   within 4e-7 of erf. */
static inline float erf_rational(float x) {
  x = x < -4.f ? -4.f : (x > 4.f ? 4.f : x);
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

static void gelu(float *x, int n) {  /* exact GELU, F.gelu's default: x (1 + erf(x / sqrt 2)) / 2 */
  for (int i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erf_rational(x[i] * 0.70710678118654752f));
}

/* e^x for x <= 0 (softmax's shifted scores): 2^n e^r with |r| <= ln 2 / 2, Cephes' expf polynomial. */
static inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  /* ln 2 in two parts */
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { float f; int32_t i; } two_n = {.i = ((int32_t)n + 127) << 23};
  return p * two_n.f;
}

static inline float dot(const float *a, const float *b, int n) {  /* n % 16 == 0 */
  v16 acc = {0};
  for (int i = 0; i < n; i += 16) acc += *(const v16u *)(a + i) * *(const v16u *)(b + i);
  return lanes_sum(acc);
}

/* One head of causal attention for `steps` queries against the whole ring cache: keys and values
   [capacity, hd]; seen [steps, capacity] says which slots each query may see; out [steps, heads, hd].
   A query always sees its own key (written first); a query that saw nothing would give NaN, as
   PyTorch's attention does on a row masked out entirely. */
static void attend_head(const float *qkv, const float *keys, const float *values, const unsigned char *seen,
                        float *out, int steps, int heads, int hd, int capacity, int h) {
  const float scale = 1.0f / sqrtf((float)hd);
  float weights[MAX_STEPS][capacity], top[MAX_STEPS], total[MAX_STEPS];
  for (int t = 0; t < steps; t++) top[t] = -INFINITY;
  for (int s = 0; s < capacity; s++)  /* each key read once for all queries */
    for (int t = 0; t < steps; t++) {
      const float score = seen[t * capacity + s] ? dot(qkv + ((size_t)t * 3 * heads + h) * hd, keys + (size_t)s * hd, hd) * scale
                                                 : -INFINITY;
      weights[t][s] = score;
      top[t] = score > top[t] ? score : top[t];
    }
  for (int t = 0; t < steps; t++) {
    float sum = 0;
    for (int s = 0; s < capacity; s++) {
      const float e = seen[t * capacity + s] ? exp_nonpositive(weights[t][s] - top[t]) : 0.0f;
      weights[t][s] = e;
      sum += e;
    }
    total[t] = 1.0f / sum;
    float *o = out + ((size_t)t * heads + h) * hd;
    for (int d = 0; d < hd; d++) o[d] = 0;
  }
  for (int s = 0; s < capacity; s++) {
    const float *v = values + (size_t)s * hd;
    for (int t = 0; t < steps; t++) {
      const float p = weights[t][s] * total[t];
      float *o = out + ((size_t)t * heads + h) * hd;
      if (p != 0.0f)
        for (int d = 0; d < hd; d++) o[d] += p * v[d];
    }
  }
}

/* Rotate queries and keys (interleaved RoPE), write keys and values at this call's slots, attend. */
static void attention(int threads, float *qkv, const float *rotation, float *cache, const int64_t *slots,
                      const unsigned char *seen, float *out, int steps, int heads, int hd, int capacity) {
  for (int t = 0; t < steps; t++)
    for (int part = 0; part < 2; part++)  /* queries, keys */
      for (int h = 0; h < heads; h++) {
        float *v = qkv + (((size_t)t * 3 + part) * heads + h) * hd;
        const float *cs = rotation + (size_t)t * hd;  /* (cos, sin) pairs */
        for (int j = 0; j < hd / 2; j++) {
          const float re = v[2 * j], im = v[2 * j + 1];
          v[2 * j] = re * cs[2 * j] - im * cs[2 * j + 1];
          v[2 * j + 1] = re * cs[2 * j + 1] + im * cs[2 * j];
        }
      }
  float *keys = cache, *values = cache + (size_t)heads * capacity * hd;  /* cache [2, heads, capacity, hd] */
  for (int t = 0; t < steps; t++)
    for (int h = 0; h < heads; h++)
      for (int d = 0; d < hd; d++) {
        keys[((size_t)h * capacity + slots[t]) * hd + d] = qkv[(((size_t)t * 3 + 1) * heads + h) * hd + d];
        values[((size_t)h * capacity + slots[t]) * hd + d] = qkv[(((size_t)t * 3 + 2) * heads + h) * hd + d];
      }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
  for (int h = 0; h < heads; h++)
    attend_head(qkv, keys + (size_t)h * capacity * hd, values + (size_t)h * capacity * hd, seen, out, steps, heads,
                hd, capacity, h);
}

/* Which slot each query may see, as moshi's ring cache decides: the slot holds the key of position
   `pos` (-1 if never written), seen when 0 <= query - pos < context. */
static void visible(unsigned char *seen, int64_t offset, int64_t end, int steps, int capacity, int context) {
  const int64_t last = end + steps - 1;
  for (int s = 0; s < capacity; s++) {
    const int64_t delta = s - last % capacity;
    const int64_t pos = s >= end + steps ? -1 : (delta <= 0 ? last + delta : last + delta - capacity);
    for (int t = 0; t < steps; t++) {
      const int64_t age = offset + t - pos;
      seen[t * capacity + s] = pos >= 0 && age >= 0 && age < context;
    }
  }
}

/* x [steps, dim] in place through `layers` layers, on `threads` threads. params: PARAMS pointers per layer (norm1 weight,
   norm1 bias, in_proj, out_proj, scale1, norm2 weight, norm2 bias, linear1, linear2, scale2, cache).
   scratch: steps * (5 * dim + hidden) floats. offset, end: the positions before this call (moshi's
   state.offset and kv_cache.end_offset); frequencies: RoPE's, [hd / 2]. Returns 0, or -1 for sizes
   it was not built for (native.py checks them first). */
int transformer_step(int threads, int layers, void *const *params, float *x, float *scratch, int steps, int dim,
                     int heads, int hidden, int capacity, int context, int64_t offset, int64_t end,
                     const float *frequencies, float eps) {
  const int hd = dim / heads;
  if (steps < 1 || steps > MAX_STEPS || dim % heads || hd % 16 || dim % 16 || hidden % 16 || capacity > MAX_CAPACITY)
    return -1;
  float *h = scratch, *qkv = h + (size_t)steps * dim, *att = qkv + (size_t)3 * steps * dim,
        *hid = att + (size_t)steps * dim;
  float rotation[MAX_STEPS][hd];
  int64_t slots[MAX_STEPS];
  unsigned char seen[MAX_STEPS * capacity];
  for (int t = 0; t < steps; t++) {
    const float position = (float)offset + (float)t;  /* as moshi: fp32 positions times fp32 frequencies */
    for (int j = 0; j < hd / 2; j++) {
      const float angle = frequencies[j] * position;
      rotation[t][2 * j] = cosf(angle);
      rotation[t][2 * j + 1] = sinf(angle);
    }
    slots[t] = (end + t) % capacity;
  }
  visible(seen, offset, end, steps, capacity, context);
  for (int l = 0; l < layers; l++) {
    const float *const *p = (const float *const *)(params + (size_t)l * PARAMS);
    norm(x, p[0], p[1], h, steps, dim, eps);
    linear(threads, steps, h, p[2], qkv, 3 * dim, dim);
    attention(threads, qkv, &rotation[0][0], (float *)p[10], slots, seen, att, steps, heads, hd, capacity);
    linear(threads, steps, att, p[3], h, dim, dim);
    add_scaled(x, h, p[4], steps, dim);
    norm(x, p[5], p[6], h, steps, dim, eps);
    linear(threads, steps, h, p[7], hid, hidden, dim);
    gelu(hid, steps * hidden);
    linear(threads, steps, hid, p[8], h, dim, hidden);
    add_scaled(x, h, p[9], steps, dim);
  }
  return 0;
}

/* The nearest centroid of one row among bins [lo, hi): (distance, index), the first on a tie. The
   distance is cdist's, sqrt(max(0, |x|^2 - 2 e.x + |e|^2)), through the table rows [-2 e, 1, |e|^2]. */
static void nearest_part(const float *table, int dim, const float *x, float x_norm, int lo, int hi, float *best,
                         int *at) {
  *best = INFINITY;
  *at = lo;
  for (int j = lo; j < hi; j++) {
    const float *e = table + (size_t)j * (dim + 2);
    __builtin_prefetch(e + (dim + 2) * 4);
    float d = dot(e, x, dim) + e[dim] * x_norm + e[dim + 1];
    d = sqrtf(d > 0.0f ? d : 0.0f);
    if (d < *best) {
      *best = d;
      *at = j;
    }
  }
}

/* Residual vector quantization of `rows` rows of x [rows, dim]: for each codebook in turn, the nearest
   centroid of what the codebooks before it left, subtracted. tables: per codebook [bins, dim + 2]
   (`lean.centroid_table`); embeddings: per codebook [bins, dim]; codes [books, rows]; residual:
   rows * dim floats of scratch. The bins split across `threads` threads, each thread's nearest compared
   after: the same code as one thread's scan. */
int rvq_encode(int threads, int books, void *const *tables, void *const *embeddings, int bins, int dim,
               const float *x, int rows, int64_t *codes, float *residual) {
  if (dim % 16) return -1;
  for (size_t i = 0; i < (size_t)rows * dim; i++) residual[i] = x[i];
  for (int r = 0; r < rows; r++) {
    float *res = residual + (size_t)r * dim;
    for (int b = 0; b < books; b++) {
      float x_norm = 0;
      for (int d = 0; d < dim; d++) x_norm += res[d] * res[d];
      float best = INFINITY;
      int at = 0;
      const int n = threads > 1 && bins >= 256 ? threads : 1;
      float bests[n];
      int ats[n];
#ifdef _OPENMP
#pragma omp parallel for num_threads(n) schedule(static) if (n > 1)
#endif
      for (int k = 0; k < n; k++)  /* part k: bins [bins k / n, bins (k + 1) / n) */
        nearest_part((const float *)tables[b], dim, res, x_norm, (int)((long)bins * k / n),
                     (int)((long)bins * (k + 1) / n), &bests[k], &ats[k]);
      for (int k = 0; k < n; k++)
        if (bests[k] < best) {
          best = bests[k];
          at = ats[k];
        }
      codes[(size_t)b * rows + r] = at;
      const float *e = (const float *)embeddings[b] + (size_t)at * dim;
      for (int d = 0; d < dim; d++) res[d] -= e[d];
    }
  }
  return 0;
}
