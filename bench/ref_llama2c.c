/* A minimal single-threaded C forward pass of the llama2.c model family, written for
 * kvscope's benchmark as the baseline "simple C implementation": plain loops, one KV
 * cache array per layer, no threading, no blocking. It mirrors what the reference C
 * runners of this format do (matvec, RMSNorm, interleaved RoPE, GQA attention, SwiGLU).
 *
 * usage: ref_llama2c MODEL.bin STEPS   -> prints "tokens=<n> seconds=<s> tok_per_s=<r> last=<id>"
 * Greedy decoding from BOS (id 1) for STEPS positions; never stops early.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  int dim, hidden, n_layers, n_heads, n_kv, vocab, seq;
} Cfg;

static void matvec(float* y, const float* x, const float* w, int n, int d) {
  for (int i = 0; i < d; i++) {
    float v = 0.0f;
    for (int j = 0; j < n; j++) v += w[(size_t)i * n + j] * x[j];
    y[i] = v;
  }
}

static void rmsnorm(float* o, const float* x, const float* w, int n) {
  float ss = 0.0f;
  for (int j = 0; j < n; j++) ss += x[j] * x[j];
  ss = 1.0f / sqrtf(ss / n + 1e-5f);
  for (int j = 0; j < n; j++) o[j] = w[j] * (ss * x[j]);
}

static void softmax(float* x, int n) {
  float m = x[0];
  for (int i = 1; i < n; i++) if (x[i] > m) m = x[i];
  float s = 0.0f;
  for (int i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
  for (int i = 0; i < n; i++) x[i] /= s;
}

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s MODEL.bin STEPS\n", argv[0]); return 2; }
  FILE* f = fopen(argv[1], "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", argv[1]); return 1; }
  Cfg c;
  if (fread(&c, sizeof(int), 7, f) != 7) { fprintf(stderr, "bad header\n"); return 1; }
  int shared = c.vocab > 0;
  if (c.vocab < 0) c.vocab = -c.vocab;
  fseek(f, 0, SEEK_END);
  long fsize = ftell(f);
  fseek(f, 28, SEEK_SET);
  float* data = malloc(fsize - 28);
  if (fread(data, 1, fsize - 28, f) != (size_t)(fsize - 28)) { fprintf(stderr, "short read\n"); return 1; }
  fclose(f);
  int hs = c.dim / c.n_heads, kv_dim = c.n_kv * hs, L = c.n_layers, D = c.dim, H = c.hidden;
  float* p = data;
  float* emb = p; p += (size_t)c.vocab * D;
  float* rms_att = p; p += (size_t)L * D;
  float* wq = p; p += (size_t)L * D * D;
  float* wk = p; p += (size_t)L * D * kv_dim;
  float* wv = p; p += (size_t)L * D * kv_dim;
  float* wo = p; p += (size_t)L * D * D;
  float* rms_ffn = p; p += (size_t)L * D;
  float* w1 = p; p += (size_t)L * D * H;
  float* w2 = p; p += (size_t)L * H * D;
  float* w3 = p; p += (size_t)L * D * H;
  float* rms_final = p; p += D;
  p += (size_t)c.seq * hs;  /* legacy freq_cis real + imag */
  float* wcls = shared ? emb : p;

  float *x = calloc(D, 4), *xb = calloc(D, 4), *xb2 = calloc(D, 4), *hb = calloc(H, 4), *hb2 = calloc(H, 4);
  float *q = calloc(D, 4), *att = calloc((size_t)c.n_heads * c.seq, 4), *logits = calloc(c.vocab, 4);
  float* kc = calloc((size_t)L * c.seq * kv_dim, 4);
  float* vc = calloc((size_t)L * c.seq * kv_dim, 4);
  int steps = atoi(argv[2]);
  if (steps > c.seq) steps = c.seq;
  int token = 1;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int pos = 0; pos < steps; pos++) {
    memcpy(x, emb + (size_t)token * D, D * 4);
    for (int l = 0; l < L; l++) {
      rmsnorm(xb, x, rms_att + (size_t)l * D, D);
      float* k = kc + ((size_t)l * c.seq + pos) * kv_dim;
      float* v = vc + ((size_t)l * c.seq + pos) * kv_dim;
      matvec(q, xb, wq + (size_t)l * D * D, D, D);
      matvec(k, xb, wk + (size_t)l * D * kv_dim, D, kv_dim);
      matvec(v, xb, wv + (size_t)l * D * kv_dim, D, kv_dim);
      for (int i = 0; i < D; i += 2) {
        int hd = i % hs;
        float fr = 1.0f / powf(10000.0f, hd / (float)hs);
        float a = pos * fr, fc = cosf(a), fs = sinf(a);
        for (int r = 0; r < (i < kv_dim ? 2 : 1); r++) {
          float* vec = r == 0 ? q : k;
          float v0 = vec[i], v1 = vec[i + 1];
          vec[i] = v0 * fc - v1 * fs;
          vec[i + 1] = v0 * fs + v1 * fc;
        }
      }
      for (int h = 0; h < c.n_heads; h++) {
        float* qh = q + h * hs;
        float* a = att + (size_t)h * c.seq;
        int kvh = h / (c.n_heads / c.n_kv);
        for (int t = 0; t <= pos; t++) {
          float* kt = kc + ((size_t)l * c.seq + t) * kv_dim + kvh * hs;
          float s = 0.0f;
          for (int i = 0; i < hs; i++) s += qh[i] * kt[i];
          a[t] = s / sqrtf((float)hs);
        }
        softmax(a, pos + 1);
        float* o = xb + h * hs;
        memset(o, 0, hs * 4);
        for (int t = 0; t <= pos; t++) {
          float* vt = vc + ((size_t)l * c.seq + t) * kv_dim + kvh * hs;
          for (int i = 0; i < hs; i++) o[i] += a[t] * vt[i];
        }
      }
      matvec(xb2, xb, wo + (size_t)l * D * D, D, D);
      for (int i = 0; i < D; i++) x[i] += xb2[i];
      rmsnorm(xb, x, rms_ffn + (size_t)l * D, D);
      matvec(hb, xb, w1 + (size_t)l * D * H, D, H);
      matvec(hb2, xb, w3 + (size_t)l * D * H, D, H);
      for (int i = 0; i < H; i++) {
        float g = hb[i];
        hb[i] = g * (1.0f / (1.0f + expf(-g))) * hb2[i];
      }
      matvec(xb, hb, w2 + (size_t)l * D * H, H, D);
      for (int i = 0; i < D; i++) x[i] += xb[i];
    }
    rmsnorm(x, x, rms_final, D);
    matvec(logits, x, wcls, D, c.vocab);
    int best = 0;
    for (int i = 1; i < c.vocab; i++) if (logits[i] > logits[best]) best = i;
    token = best;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("tokens=%d seconds=%.6f tok_per_s=%.1f last=%d\n", steps, s, steps / s, token);
  return 0;
}
