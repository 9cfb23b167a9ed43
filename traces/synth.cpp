#include "traces/synth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "kernels/io/error.h"
#include "kernels/io/halfs.h"
#include "kernels/io/rng.h"
#include "kernels/model/model.h"
#include "kvscope_version.h"
#include "traces/reader.h"
#include "traces/writer.h"

namespace kvscope::trace::synth {

using nlohmann::json;

// ---------------------------------------------------------------------------------------
// Random numbers: splitmix64 to derive keys, xoshiro256** for streams, a 32-bit
// multiply-xorshift hash for per-entry draws. No std:: distributions (their algorithms
// differ between standard libraries).
namespace {

// A key for (seed, a, b, c): each field is folded in through the splitmix64 finaliser.
uint64_t key(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  uint64_t h = fmix64(seed + 0x9E3779B97F4A7C15ull);
  h = fmix64(h ^ (a + 0x3C6EF372FE94F82Aull));
  h = fmix64(h ^ (b + 0xDAA66D2C7DDF743Full));
  h = fmix64(h ^ (c + 0x78DDE6E5FD29F054ull));
  return h;
}

double u01(uint64_t k) { return static_cast<double>(k >> 11) * 0x1.0p-53; }

inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

class Rng {  // xoshiro256** (kernels/io/rng.h) with the draws synthesis needs
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t next() { return g_.next(); }
  double uniform() { return u01(next()); }
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  int integer(int lo, int hi) {  // lo..hi inclusive
    return lo + static_cast<int>(uniform() * (hi - lo + 1));
  }
  double normal() {  // Irwin-Hall: sum of 12 uniforms - 6 (mean 0, variance 1)
    double s = 0;
    for (int i = 0; i < 12; ++i) s += uniform();
    return s - 6.0;
  }

 private:
  Xoshiro256 g_;
};

enum Tag : uint64_t { kTagHead = 1, kTagKv, kTagHitter, kTagNoise, kTagBg, kTagToken, kTagNormal };

constexpr int kTableBits = 10, kTable = 1 << kTableBits;
constexpr double kFitDensity = 0.05, kFitZipf = 1.0;  // heavy-hitter sets of a fitted model
constexpr double kMaxFocus = 0.99;
constexpr double kFitNoise = 0.5;  // noise sigma of a fitted model
constexpr int kMaxContext = 1 << 20;
constexpr int kSinkKeys = 4;  // trace-info's sink mass: keys 0..3; heavy hitters start after them

// kTable standard normal draws (fixed, independent of the seed).
const std::vector<double>& normal_table() {
  static const std::vector<double> t = [] {
    Rng r(0x6b7673636f7065ull);
    std::vector<double> v(kTable);
    for (auto& x : v) x = r.normal();
    return v;
  }();
  return t;
}

// exp(sigma * g_i) over the normal table, rescaled to mean 1.
std::vector<float> lognormal_table(double sigma) {
  const auto& g = normal_table();
  std::vector<double> v(kTable);
  double s = 0;
  for (int i = 0; i < kTable; ++i) s += (v[i] = std::exp(sigma * g[i]));
  std::vector<float> out(kTable);
  for (int i = 0; i < kTable; ++i) out[i] = static_cast<float>(v[i] * kTable / s);
  return out;
}

// Derived constants of one head's distance kernels, with their full (saturated) sums.
struct Kern {
  double rn = 0, rf = 0;               // decay ratios of the sharp and broad local kernels
  int pk = 0, dn = 0, df = 0, dp = 0;  // near peak; support (max distance) of near, far, periodic
  double zn = 0, zf = 0, zp = 0, zs = 0;
};

double geo(double r, int n) {  // r^0 + ... + r^(n-1)
  if (n <= 0) return 0;
  if (r == 1.0) return n;
  return (1.0 - std::pow(r, n)) / (1.0 - r);
}

// Kernel prefix sums over distances 0..n (n = q: the keys a query at q can see).
double near_sum(const Kern& k, int n) {
  if (n >= k.dn && k.zn > 0) return k.zn;
  n = std::min(n, k.dn);
  const int m = std::min(n, k.pk);
  double s = std::pow(k.rn, k.pk - m) * geo(k.rn, m + 1);  // d = 0..m: r^(pk-d)
  if (n > k.pk) s += k.rn * geo(k.rn, n - k.pk);          // d = pk+1..n: r^(d-pk)
  return s;
}
double far_sum(const Kern& k, int n) {
  if (n >= k.df && k.zf > 0) return k.zf;
  return geo(k.rf, std::min(n, k.df) + 1);
}
double per_sum(const HeadParams& p, const Kern& k, int n) {
  if (n >= k.dp && k.zp > 0) return k.zp;
  return geo(p.period_decay, std::min(p.period_reps, n / p.period));
}
double sink_sum(const HeadParams& p, const Kern& k, int n) {
  if (n >= p.n_sink && k.zs > 0) return k.zs;
  double s = 0, w = 1;
  for (int j = 0; j < p.n_sink && j <= n; ++j, w *= p.sink_ratio) s += w;
  return s;
}

Kern make_kern(const HeadParams& p) {
  Kern k;
  k.rn = std::exp(-1.0 / p.tau_near);
  k.rf = std::exp(-1.0 / p.tau_far);
  k.pk = p.near_peak;
  k.dn = p.near_peak + static_cast<int>(std::ceil(10 * p.tau_near));
  k.df = static_cast<int>(std::ceil(10 * p.tau_far));
  k.dp = p.period * p.period_reps;
  k.zn = near_sum(k, k.dn);
  k.zf = far_sum(k, k.df);
  k.zp = per_sum(p, k, k.dp);
  k.zs = sink_sum(p, k, p.n_sink);
  return k;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Shapes: figures from each model's config.json on the Hugging Face hub (docs/synth.md).
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {"llama3-8b", 32, 32, 8, 128, 4096, 14336, 128256, 8192, 500000.0f, "halves", "meta-llama/Meta-Llama-3-8B config.json"},
      {"llama3-70b", 80, 64, 8, 128, 8192, 28672, 128256, 8192, 500000.0f, "halves", "meta-llama/Meta-Llama-3-70B config.json"},
      {"mistral-7b", 32, 32, 8, 128, 4096, 14336, 32000, 32768, 10000.0f, "halves", "mistralai/Mistral-7B-v0.1 config.json"},
      {"qwen2.5-7b", 28, 28, 4, 128, 3584, 18944, 152064, 131072, 1000000.0f, "halves", "Qwen/Qwen2.5-7B config.json"},
      {"smollm2-135m", 30, 9, 3, 64, 576, 1536, 49152, 8192, 100000.0f, "halves", "HuggingFaceTB/SmolLM2-135M config.json"},
      {"stories260K", 5, 8, 4, 8, 64, 172, 512, 512, 10000.0f, "interleaved",
       "karpathy/tinyllamas stories260K (llama2.c header, as in traces/stories260K-*.kvt)"},
  };
  return s;
}

const Shape& find_shape(const std::string& name) {
  std::string names;
  for (const Shape& s : shapes()) {
    if (s.name == name) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  throw Error("synth: --shape '" + name + "' is not one of: " + names);
}

json HeadParams::to_json() const {
  auto r = [](double x) { return std::round(x * 1e6) / 1e6; };
  return {{"m_sink", r(m_sink)},     {"m_near", r(m_near)},       {"m_far", r(m_far)},     {"m_per", r(m_per)},
          {"m_hh", r(m_hh)},         {"m_bg", r(m_bg)},           {"n_sink", n_sink},      {"sink_ratio", r(sink_ratio)},
          {"tau_near", r(tau_near)}, {"near_peak", near_peak},    {"tau_far", r(tau_far)}, {"period", period},
          {"period_decay", r(period_decay)}, {"period_reps", period_reps}, {"noise", r(noise)}, {"focus", r(focus)}, {"base", r(base)}};
}

json KvParams::to_json() const { return {{"hh_density", density}, {"zipf", zipf}}; }

namespace {

void normalise_masses(HeadParams& p) {
  const double floor_bg = 0.01;
  p.m_bg = std::max(p.m_bg, 0.0);
  const double s = p.m_sink + p.m_near + p.m_far + p.m_per + p.m_hh + p.m_bg;
  for (double* m : {&p.m_sink, &p.m_near, &p.m_far, &p.m_per, &p.m_hh, &p.m_bg}) *m /= s;
  if (p.m_bg < floor_bg) {  // a background is always there (it anchors the lse)
    const double rest = 1.0 - p.m_bg;
    for (double* m : {&p.m_sink, &p.m_near, &p.m_far, &p.m_per, &p.m_hh}) *m *= (1.0 - floor_bg) / rest;
    p.m_bg = floor_bg;
  }
}

}  // namespace

Model draw_model(int n_layers, int n_heads, int n_kv_heads, uint64_t seed) {
  Model m;
  m.n_layers = n_layers;
  m.n_heads = n_heads;
  m.n_kv_heads = n_kv_heads;
  for (int l = 0; l < n_layers; ++l) {
    // Relative depth: the first layers are broad and sink-free, later ones lean on sinks
    // and heavy hitters (as measured on Llama-family models: StreamingLLM, H2O papers).
    const double t = n_layers > 1 ? static_cast<double>(l) / (n_layers - 1) : 0.5;
    const bool early = t < 0.08;
    for (int h = 0; h < n_heads; ++h) {
      Rng r(key(seed, kTagHead, static_cast<uint64_t>(l), static_cast<uint64_t>(h)));
      HeadParams p;
      p.m_sink = early ? r.uniform(0.0, 0.05) : r.uniform(0.2, 1.5);
      p.m_near = r.uniform(0.1, 0.8);
      p.m_far = r.uniform(0.0, 0.4);
      p.m_per = r.uniform() < 0.25 ? r.uniform(0.05, 0.25) : 0.0;
      p.m_hh = r.uniform(0.1, 0.8) * (early ? 0.5 : 1.0);
      p.m_bg = early ? r.uniform(0.4, 1.2) : r.uniform(0.05, 0.4);
      p.n_sink = r.integer(1, 4);
      p.sink_ratio = r.uniform(0.05, 0.5);
      p.tau_near = r.uniform(0.3, 3.0);
      const double u = r.uniform();
      p.near_peak = u < 0.55 ? 0 : u < 0.9 ? 1 : 2;
      p.tau_far = r.uniform(8.0, 96.0);
      p.period = r.integer(8, 128);
      p.period_decay = r.uniform(0.6, 0.95);
      p.period_reps = 8;
      p.noise = r.uniform(0.2, 1.0);
      p.focus = r.uniform() < 0.3 ? 0.0 : r.uniform(0.1, 0.8);
      p.base = r.uniform(-1.0, 3.0);
      normalise_masses(p);
      m.heads.push_back(p);
    }
    for (int g = 0; g < n_kv_heads; ++g) {
      Rng r(key(seed, kTagKv, static_cast<uint64_t>(l), static_cast<uint64_t>(g)));
      KvParams k;
      k.density = r.uniform(0.01, 0.05);
      k.zipf = r.uniform(0.7, 1.3);
      m.kv.push_back(k);
    }
  }
  return m;
}

// ---------------------------------------------------------------------------------------
// Generator

namespace {
struct Alphas {
  double sink = 0, near = 0, far = 0, per = 0, hh = 0, bg = 0;
};
}  // namespace

Generator::Generator(Model m, int context, uint64_t seed) : m_(std::move(m)), context_(context), seed_(seed) {
  const int L = m_.n_layers, H = m_.n_heads, G = m_.n_kv_heads;
  hitters_.resize(static_cast<size_t>(L) * G);
  for (int l = 0; l < L; ++l)
    for (int g = 0; g < G; ++g) {
      const KvParams& kp = m_.kvp(l, g);
      Hitters& hs = hitters_[static_cast<size_t>(l) * G + g];
      const uint64_t base = key(seed, kTagHitter, static_cast<uint64_t>(l), static_cast<uint64_t>(g));
      double cum = 0;
      for (int j = kSinkKeys; j < context; ++j) {  // keys 0..3 belong to the sinks
        const double u = u01(fmix64(base ^ (static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ull)));
        if (u >= kp.density) continue;
        const double v = std::max(u / kp.density, 1e-3);
        const float w = static_cast<float>(std::pow(v, -kp.zipf));
        hs.pos.push_back(static_cast<uint32_t>(j));
        hs.w.push_back(w);
        cum += w;
        hs.cum.push_back(cum);
      }
    }
  noise_.resize(static_cast<size_t>(L) * H);
  head_key_.resize(static_cast<size_t>(L) * H);
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      const size_t i = static_cast<size_t>(l) * H + h;
      noise_[i] = lognormal_table(m_.heads[i].noise);
      head_key_[i] = static_cast<uint32_t>(key(seed, kTagNoise, static_cast<uint64_t>(l), static_cast<uint64_t>(h)));
    }
  bg_table_ = lognormal_table(0.5);
  b_.resize(G);
  bcum_.resize(G);
}

void Generator::prepare_layer(int layer, int last) {
  if (layer < 0 || layer >= m_.n_layers || last < 0) throw Error("synth: prepare_layer: layer or position out of range");
  if (layer == layer_ && last <= last_) return;
  layer_ = layer;
  last_ = last;
  for (int g = 0; g < m_.n_kv_heads; ++g) {
    const uint32_t k = static_cast<uint32_t>(key(seed_, kTagBg, static_cast<uint64_t>(layer), static_cast<uint64_t>(g)));
    std::vector<float>& b = b_[g];
    std::vector<double>& c = bcum_[g];
    b.resize(static_cast<size_t>(last) + 1);
    c.resize(static_cast<size_t>(last) + 1);
    const float* t = bg_table_.data();
    for (int j = 0; j <= last; ++j) b[j] = t[hash32(k ^ static_cast<uint32_t>(j)) >> (32 - kTableBits)];
    double s = 0;
    for (int j = 0; j <= last; ++j) c[j] = (s += b[j]);
  }
}

size_t Generator::hitters_upto(const Hitters& hs, int q) const {
  return static_cast<size_t>(std::upper_bound(hs.pos.begin(), hs.pos.end(), static_cast<uint32_t>(q)) - hs.pos.begin());
}

// Component weights a_c(q) = m_c / (Z_c(q) * W(q)), where Z_c(q) is the component's
// unnormalised mass over keys 0..q and W(q) the total mass of the non-empty components.
static Alphas alphas_of(const HeadParams& p, const Kern& k, int q, double zb, double zh) {
  const double zs = sink_sum(p, k, q), zn = near_sum(k, q), zf = far_sum(k, q), zp = per_sum(p, k, q);
  double W = 0;
  const double z[6] = {zs, zn, zf, zp, zh, zb};
  const double mm[6] = {p.m_sink, p.m_near, p.m_far, p.m_per, p.m_hh, p.m_bg};
  for (int c = 0; c < 6; ++c)
    if (z[c] > 0) W += mm[c];
  double a[6];
  for (int c = 0; c < 6; ++c) a[c] = z[c] > 0 && mm[c] > 0 ? mm[c] / (z[c] * W) : 0.0;
  return {a[0], a[1], a[2], a[3], a[4], a[5]};
}

namespace {

struct RowInputs {
  const HeadParams* p;
  const Kern* k;
  const float* b;        // background key weights
  double zb;             // their sum over 0..q
  const uint32_t* hpos;  // heavy hitters at or before q
  const float* hw;
  size_t nh;
  const float* noise;    // log-normal table
  uint32_t head_key;
};

}  // namespace

// One row: background + hitters + local kernels + periodic, times per-entry noise, plus
// sinks; normalised; lse from the score of a unit background key (HeadParams::base).
static float make_row(const RowInputs& in, const Alphas& a, int q, float* w) {
  const HeadParams& p = *in.p;
  const Kern& k = *in.k;
  const double a_sink = a.sink, a_near = a.near, a_far = a.far, a_per = a.per, a_hh = a.hh, a_bg = a.bg;
  const int n = q + 1;
  const float fb = static_cast<float>(a_bg);
  for (int j = 0; j < n; ++j) w[j] = fb * in.b[j];
  if (a_hh > 0) {
    const float fh = static_cast<float>(a_hh);
    for (size_t i = 0; i < in.nh; ++i) w[in.hpos[i]] += fh * in.hw[i];
  }
  if (a_far > 0) {
    const int dmax = std::min(q, k.df);
    double v = a_far;
    for (int d = 0; d <= dmax; ++d, v *= k.rf) w[q - d] += static_cast<float>(v);
  }
  if (a_near > 0) {
    const int dmax = std::min(q, k.dn);
    for (int d = 0; d <= dmax; ++d) w[q - d] += static_cast<float>(a_near * std::pow(k.rn, std::abs(d - k.pk)));
  }
  if (a_per > 0) {
    double v = a_per;
    for (int r = 1; r <= p.period_reps && r * p.period <= q; ++r, v *= p.period_decay) w[q - r * p.period] += static_cast<float>(v);
  }
  const uint32_t rk = hash32(in.head_key ^ hash32(static_cast<uint32_t>(q) * 0x9E3779B9u + 0x632BE5ABu));
  const float* nt = in.noise;
  for (int j = 0; j < n; ++j) w[j] *= nt[hash32(rk ^ static_cast<uint32_t>(j)) >> (32 - kTableBits)];
  if (a_sink > 0) {
    double v = a_sink;
    for (int j = 0; j < p.n_sink && j < n; ++j, v *= p.sink_ratio) w[j] += static_cast<float>(v);
  }
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int t = 0; t < 8; ++t) acc[t] += w[j + t];
  for (; j < n; ++j) acc[0] += w[j];
  const double total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  // Focus: a share c of the row moves onto one key drawn from the row itself, so the
  // expected row is unchanged and the entropy drops with c.
  const double c = std::clamp(p.focus, 0.0, kMaxFocus);
  int jf = -1;
  if (c > 0) {
    const double target = static_cast<double>(hash32(rk + 0x68E31DA4u)) * 0x1p-32 * total;
    double run = 0;
    jf = q;
    for (int i = 0; i < n; ++i)
      if ((run += w[i]) > target) {
        jf = i;
        break;
      }
  }
  const float inv = static_cast<float>((1.0 - c) / total);
  for (int i = 0; i < n; ++i) w[i] *= inv;
  if (jf >= 0) w[jf] += static_cast<float>(c);
  // A background key of unit weight and unit noise scores `base` (a model without a
  // background: the row's total weight stands in for it).
  return static_cast<float>(p.base + std::log(total / ((1.0 - c) * (a_bg > 0 ? a_bg : 1.0))));
}

float Generator::row(int layer, int head, int q, float* probs) const {
  if (layer != layer_ || head < 0 || head >= m_.n_heads) throw Error("synth: row before prepare_layer");
  const size_t lh = static_cast<size_t>(layer) * m_.n_heads + head;
  return row_with(layer, head, q, m_.heads[lh], noise_[lh], probs);
}

float Generator::row_with(int layer, int head, int q, const HeadParams& p, const std::vector<float>& noise, float* probs) const {
  if (layer != layer_ || q < 0 || q > last_ || head < 0 || head >= m_.n_heads) throw Error("synth: row before prepare_layer");
  const size_t lh = static_cast<size_t>(layer) * m_.n_heads + head;
  const int g = head / (m_.n_heads / m_.n_kv_heads);
  const Hitters& hs = hitters_[static_cast<size_t>(layer) * m_.n_kv_heads + g];
  const size_t nh = hitters_upto(hs, q);
  const double zh = nh ? hs.cum[nh - 1] : 0.0, zb = bcum_[g][q];
  const Kern k = make_kern(p);
  const Alphas a = alphas_of(p, k, q, zb, zh);
  const RowInputs in{&p, &k, b_[g].data(), zb, hs.pos.data(), hs.w.data(), nh, noise.data(), head_key_[lh]};
  return make_row(in, a, q, probs);
}

std::vector<float> Generator::noise_table(double sigma) { return lognormal_table(sigma); }

namespace {

// cs[j] += sum over (d, K) of the kernel with j + d <= q_end of K * a[j + d]. `a` is
// constant from some q0 on (every Z_c saturated, every component present): the part
// beyond q0 is a prefix sum of the kernel, so the cost is O(q_end log n + q0 * n).
void add_distance_colsum(const std::vector<int>& kd, const std::vector<double>& kv, const std::vector<double>& a, int q_end,
                         double* cs) {
  if (q_end < 0 || kd.empty()) return;
  int q0 = q_end;
  while (q0 > 0 && a[q0 - 1] == a[q_end]) --q0;
  const double ainf = a[q_end];
  std::vector<double> kc(kv.size());
  double s = 0;
  for (size_t i = 0; i < kv.size(); ++i) kc[i] = (s += kv[i]);
  const size_t n = kd.size();
  for (int j = 0; j <= q_end; ++j) {
    const int dlim = q_end - j;
    double acc = 0;
    size_t i = 0;
    for (; i < n && kd[i] <= dlim && j + kd[i] < q0; ++i) acc += kv[i] * a[j + kd[i]];
    const size_t hi = kd[n - 1] <= dlim ? n : static_cast<size_t>(std::upper_bound(kd.begin(), kd.end(), dlim) - kd.begin());
    if (hi > i) acc += ainf * (kc[hi - 1] - (i > 0 ? kc[i - 1] : 0.0));
    cs[j] += acc;
  }
}

}  // namespace

void Generator::prefill_colsum(int layer, int head, int q_end, int P, double* out) const {
  if (q_end < 0) return;
  if (layer != layer_ || q_end > last_ || q_end >= P || head < 0 || head >= m_.n_heads)
    throw Error("synth: prefill_colsum before prepare_layer");
  const size_t lh = static_cast<size_t>(layer) * m_.n_heads + head;
  const HeadParams& p = m_.heads[lh];
  const Kern k = make_kern(p);
  const int g = head / (m_.n_heads / m_.n_kv_heads);
  const Hitters& hs = hitters_[static_cast<size_t>(layer) * m_.n_kv_heads + g];
  const size_t n = static_cast<size_t>(q_end) + 1;
  std::vector<double> as(n), an(n), af(n), ap(n), ah(n), ab(n);
  size_t nh = 0;
  for (int q = 0; q <= q_end; ++q) {
    while (nh < hs.pos.size() && hs.pos[nh] <= static_cast<uint32_t>(q)) ++nh;
    const Alphas a = alphas_of(p, k, q, bcum_[g][q], nh ? hs.cum[nh - 1] : 0.0);
    as[q] = a.sink, an[q] = a.near, af[q] = a.far, ap[q] = a.per, ah[q] = a.hh, ab[q] = a.bg;
  }
  // Suffix sums: sum over q = j..q_end of a(q), for the components that do not move with q.
  for (auto* v : {&as, &ah, &ab})
    for (size_t q = n - 1; q-- > 0;) (*v)[q] += (*v)[q + 1];
  double w = 1;
  for (int j = 0; j < p.n_sink && j <= q_end; ++j, w *= p.sink_ratio) out[j] += w * as[j];
  const float* b = b_[g].data();
  for (int j = 0; j <= q_end; ++j) out[j] += b[j] * ab[j];
  for (size_t i = 0; i < hs.pos.size() && hs.pos[i] <= static_cast<uint32_t>(q_end); ++i) out[hs.pos[i]] += hs.w[i] * ah[hs.pos[i]];
  std::vector<int> kd;
  std::vector<double> kv;
  if (p.m_near > 0) {
    for (int d = 0; d <= k.dn; ++d) kd.push_back(d), kv.push_back(std::pow(k.rn, std::abs(d - k.pk)));
    add_distance_colsum(kd, kv, an, q_end, out);
  }
  if (p.m_far > 0) {
    kd.clear(), kv.clear();
    double v = 1;
    for (int d = 0; d <= k.df; ++d, v *= k.rf) kd.push_back(d), kv.push_back(v);
    add_distance_colsum(kd, kv, af, q_end, out);
  }
  if (p.m_per > 0) {
    kd.clear(), kv.clear();
    double v = 1;
    for (int r = 1; r <= p.period_reps; ++r, v *= p.period_decay) kd.push_back(r * p.period), kv.push_back(v);
    add_distance_colsum(kd, kv, ap, q_end, out);
  }
}

// ---------------------------------------------------------------------------------------
// Fitting

json FitResult::to_json() const {
  json heads_j = json::array();
  for (int l = 0; l < n_layers; ++l)
    for (int h = 0; h < n_heads; ++h) {
      const size_t i = static_cast<size_t>(l) * n_heads + h;
      auto r = [](double x) { return std::round(x * 1e5) / 1e5; };
      json e = {{"layer", l}, {"head", h}, {"target_sink", r(sink[i])}, {"target_entropy", r(entropy[i])},
                {"fit_sink", r(fit_sink[i])}, {"fit_entropy", r(fit_entropy[i])}};
      e["params"] = heads[i].to_json();
      heads_j.push_back(e);
    }
  return {{"trace", path}, {"layers", n_layers}, {"heads", n_heads}, {"kv_heads", n_kv_heads}, {"hh_density", kFitDensity},
          {"zipf", kFitZipf}, {"per_head", heads_j}};
}

namespace {

constexpr int kProfile = 64;   // distance profile length
constexpr int kFarDist = 16;   // "far" keys for the heavy-hitter statistic
constexpr int kCalibRows = 128;  // rows per head used to calibrate

struct RowStat {
  double sink = 0, entropy = 0, lse_off = 0;
};

// Non-negative least squares for 3 unknowns by trying every active set.
bool nnls3(const double A[][3], const double* y, int n, double x[3], double& sse) {
  bool found = false;
  sse = 1e300;
  for (int mask = 1; mask < 8; ++mask) {
    int idx[3], m = 0;
    for (int c = 0; c < 3; ++c)
      if (mask & (1 << c)) idx[m++] = c;
    double M[3][3] = {}, r[3] = {};
    for (int i = 0; i < n; ++i)
      for (int a = 0; a < m; ++a) {
        r[a] += A[i][idx[a]] * y[i];
        for (int b = 0; b < m; ++b) M[a][b] += A[i][idx[a]] * A[i][idx[b]];
      }
    // Gaussian elimination (m <= 3).
    double sol[3] = {};
    bool ok = true;
    for (int c = 0; c < m && ok; ++c) {
      int piv = c;
      for (int rr = c + 1; rr < m; ++rr)
        if (std::fabs(M[rr][c]) > std::fabs(M[piv][c])) piv = rr;
      if (std::fabs(M[piv][c]) < 1e-300) ok = false;
      if (!ok) break;
      std::swap(M[c], M[piv]);
      std::swap(r[c], r[piv]);
      for (int rr = 0; rr < m; ++rr) {
        if (rr == c) continue;
        const double f = M[rr][c] / M[c][c];
        for (int cc = 0; cc < m; ++cc) M[rr][cc] -= f * M[c][cc];
        r[rr] -= f * r[c];
      }
    }
    if (!ok) continue;
    for (int a = 0; a < m; ++a) sol[a] = r[a] / M[a][a];
    bool nonneg = true;
    for (int a = 0; a < m; ++a) nonneg &= sol[a] >= 0;
    if (!nonneg) continue;
    double full[3] = {0, 0, 0};
    for (int a = 0; a < m; ++a) full[idx[a]] = sol[a];
    double e = 0;
    for (int i = 0; i < n; ++i) {
      const double d = y[i] - (A[i][0] * full[0] + A[i][1] * full[1] + A[i][2] * full[2]);
      e += d * d;
    }
    if (e < sse) {
      sse = e;
      for (int c = 0; c < 3; ++c) x[c] = full[c];
      found = true;
    }
  }
  return found;
}

}  // namespace


namespace {

// The focus-free rows of a trial parameter set at the calibration positions. The focus
// key is drawn from the row itself, so the expected sink mass does not depend on the
// focus share c and the expected entropy is a closed form over these rows (entropy()):
// the calibration does not pay for the focus draw's sampling noise.
struct BaseRows {
  std::vector<std::vector<float>> rows;
  double sink = 0, lse_off = 0;  // mean sink mass; mean lse - base at c = 0

  void eval(const Generator& gen, int layer, int head, const HeadParams& p, const std::vector<int>& qs) {
    HeadParams p0 = p;
    p0.focus = 0;
    const std::vector<float> nt = Generator::noise_table(p0.noise);
    rows.resize(qs.size());
    sink = lse_off = 0;
    for (size_t i = 0; i < qs.size(); ++i) {
      rows[i].resize(static_cast<size_t>(qs[i]) + 1);
      lse_off += gen.row_with(layer, head, qs[i], p0, nt, rows[i].data()) - p0.base;
      for (int j = 0; j < kSinkKeys && j <= qs[i]; ++j) sink += rows[i][j];
    }
    const double n = static_cast<double>(std::max<size_t>(qs.size(), 1));
    sink /= n, lse_off /= n;
  }
  // Mean over rows of the expected entropy after moving a share c onto a key drawn from
  // the row: H = sum_i t((1-c) pi_i) + sum_j pi_j [t((1-c) pi_j + c) - t((1-c) pi_j)].
  double entropy(double c) const {
    auto t = [](double x) { return x > 0 ? -x * std::log(x) : 0.0; };
    double acc = 0;
    for (const auto& r : rows) {
      double h = 0;
      for (float pf : r) {
        const double pi = pf, a = (1 - c) * pi;
        const double ta = t(a);
        h += ta;
        if (c > 0) h += pi * (t(a + c) - ta);
      }
      acc += h;
    }
    return acc / static_cast<double>(std::max<size_t>(rows.size(), 1));
  }
};

// Bisection for f(x) = target on [lo, hi], f monotone (increasing or decreasing).
template <class F>
double bisect(F f, double lo, double hi, double target, bool increasing, int iters = 14) {
  for (int i = 0; i < iters; ++i) {
    const double mid = 0.5 * (lo + hi);
    const bool below = f(mid) < target;
    if (below == increasing) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}

HeadParams with_sink(const HeadParams& p, double ms) {
  HeadParams t = p;
  const double f = p.m_sink < 1 ? (1.0 - ms) / (1.0 - p.m_sink) : 0.0;
  t.m_near *= f, t.m_far *= f, t.m_per *= f, t.m_hh *= f, t.m_bg *= f;
  t.m_sink = ms;
  return t;
}

// Moves a share f of the local mass to the background (raises the entropy without noise).
HeadParams flatten(const HeadParams& p, double f) {
  HeadParams t = p;
  t.m_bg += f * (p.m_near + p.m_far);
  t.m_near *= 1 - f, t.m_far *= 1 - f;
  return t;
}

}  // namespace

FitResult fit_trace(const std::string& path, uint64_t seed) {
  TraceReader r(path);
  const TraceInfo& in = r.info();
  if (r.n_steps() == 0) throw Error(path + ": the trace has no complete steps to fit");
  FitResult f;
  f.path = path;
  f.n_layers = static_cast<int>(in.n_layers);
  f.n_heads = static_cast<int>(in.n_heads);
  f.n_kv_heads = static_cast<int>(in.n_kv_heads);
  const int L = f.n_layers, H = f.n_heads, G = f.n_kv_heads;
  const int ctx = static_cast<int>(in.prompt_len + r.n_steps() - 1);
  const size_t LH = static_cast<size_t>(L) * H;
  f.heads.resize(LH);
  f.sink.assign(LH, 0);
  f.entropy.assign(LH, 0);
  f.lse.assign(LH, 0);
  f.fit_sink.assign(LH, 0);
  f.fit_entropy.assign(LH, 0);

  // The calibration evaluates rows with the hitter sets, background weights and noise
  // keys that a synthesis of the same geometry and seed uses.
  Model geom;
  geom.n_layers = L, geom.n_heads = H, geom.n_kv_heads = G;
  geom.heads.assign(LH, HeadParams{});
  geom.kv.assign(static_cast<size_t>(L) * G, KvParams{kFitDensity, kFitZipf});
  Generator gen(geom, ctx + 1, seed);

  const std::vector<double> tau_near_grid = {0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0};
  const std::vector<double> tau_far_grid = {4, 6, 8, 12, 16, 24, 32, 48, 64, 96};
  LayerFrame frame;
  std::vector<float> row, vals, buf;
  for (int l = 0; l < L; ++l) {
    // One pass over the layer's stored rows (prefill window and decode rows, every head).
    std::vector<std::vector<double>> prof(H, std::vector<double>(kProfile + kSinkKeys, 0.0));
    std::vector<double> prof_n(H, 0.0), rows(H, 0.0);
    std::vector<std::vector<double>> far_col(H, std::vector<double>(static_cast<size_t>(ctx) + 1, 0.0));
    std::vector<double> far_cnt(static_cast<size_t>(ctx) + 1, 0.0);
    std::vector<int> qpos;
    int max_q = 0;
    for (uint32_t ci = 0; ci < r.chunks().size(); ++ci) {
      r.read_frame(ci, static_cast<uint32_t>(l), frame);
      for (const StepLayerView& sv : frame.steps)
        for (uint32_t ri = 0; ri < sv.n_rows; ++ri) {
          const int q = static_cast<int>(sv.row(ri, 0, in.n_heads).qpos);
          qpos.push_back(q);
          max_q = std::max(max_q, q);
          for (int j = kSinkKeys; j + kFarDist <= q; ++j) far_cnt[j] += 1;
          for (int h = 0; h < H; ++h) {
            const RowView& rv = sv.row(ri, static_cast<uint32_t>(h), in.n_heads);
            row.assign(static_cast<size_t>(q) + 1, 0.0f);
            vals.resize(rv.n);
            halves_to_floats(rv.probs, vals.data(), rv.n);
            double ent = 0, sink = 0;
            for (uint32_t i = 0; i < rv.n; ++i) {
              const uint32_t kk = in.mode == Mode::Dense ? i : rv.keys[i];
              const double x = vals[i];
              if (kk <= static_cast<uint32_t>(q)) row[kk] = vals[i];
              if (x > 0) ent -= x * std::log(x);
              if (kk < kSinkKeys) sink += x;
            }
            if (in.mode == Mode::TopK && rv.residual > 0 && static_cast<uint32_t>(q) + 1 > rv.n)
              ent -= rv.residual * std::log(rv.residual / (q + 1 - rv.n));
            const size_t i = static_cast<size_t>(l) * H + h;
            f.sink[i] += sink;
            f.entropy[i] += ent;
            f.lse[i] += rv.lse;
            rows[h] += 1;
            if (q >= kProfile + kSinkKeys - 1) {  // keys q-63..q all past the sinks
              for (int d = 0; d < kProfile; ++d) prof[h][d] += row[q - d];
              for (int j = 0; j < kSinkKeys; ++j) prof[h][kProfile + j] += row[j];
              prof_n[h] += 1;
            }
            for (int j = kSinkKeys; j + kFarDist <= q; ++j) far_col[h][j] += row[j];
          }
        }
    }
    // Calibration positions: up to kCalibRows of the stored rows, evenly spread.
    std::vector<int> qs;
    if (qpos.size() <= static_cast<size_t>(kCalibRows)) qs = qpos;
    else
      for (int i = 0; i < kCalibRows; ++i) qs.push_back(qpos[static_cast<size_t>(i) * (qpos.size() - 1) / (kCalibRows - 1)]);
    gen.prepare_layer(l, max_q);

    for (int h = 0; h < H; ++h) {
      const size_t i = static_cast<size_t>(l) * H + h;
      const double n = std::max(rows[h], 1.0);
      const double S = f.sink[i] /= n, E = f.entropy[i] /= n, LSE = f.lse[i] /= n;
      HeadParams p;
      p.m_per = 0;
      p.n_sink = kSinkKeys;
      // 1. Distance profile: mean probability at distance d (keys past the sinks), fitted
      //    by least squares as m_near * near kernel + m_far * far kernel + a flat level,
      //    over a grid of decay lengths.
      double flat = 0;
      if (prof_n[h] > 0) {
        double y[kProfile];
        for (int d = 0; d < kProfile; ++d) y[d] = prof[h][d] / prof_n[h];
        int pk = 0;
        for (int d = 1; d < 4; ++d)
          if (y[d] > y[pk]) pk = d;
        double best = 1e300;
        for (double tn : tau_near_grid)
          for (double tf : tau_far_grid) {
            HeadParams t;
            t.tau_near = tn, t.near_peak = pk, t.tau_far = tf;
            const Kern k = make_kern(t);
            const double zn = near_sum(k, k.dn), zf = far_sum(k, k.df);
            double A[kProfile][3];
            for (int d = 0; d < kProfile; ++d) {
              A[d][0] = d <= k.dn ? std::pow(k.rn, std::abs(d - pk)) / zn : 0.0;
              A[d][1] = d <= k.df ? std::pow(k.rf, d) / zf : 0.0;
              A[d][2] = 1.0;
            }
            double x[3], sse;
            if (nnls3(A, y, kProfile, x, sse) && sse < best) {
              best = sse;
              p.tau_near = tn, p.near_peak = pk, p.tau_far = tf;
              p.m_near = x[0], p.m_far = x[1];
              flat = x[2];
            }
          }
        // Sink shape: mean probability of keys 0..3 above the flat level.
        double e[kSinkKeys];
        for (int j = 0; j < kSinkKeys; ++j) e[j] = std::max(prof[h][kProfile + j] / prof_n[h] - flat, 0.0);
        p.sink_ratio = e[0] > 0 ? std::clamp(e[1] / e[0], 0.02, 1.0) : 0.3;
      } else {
        p.m_near = 0.3, p.tau_near = 1.0, p.m_far = 0.2, p.tau_far = 32;
      }
      if (p.m_near + p.m_far > 0.97) {
        const double sc = 0.97 / (p.m_near + p.m_far);
        p.m_near *= sc, p.m_far *= sc;
      }
      p.m_sink = std::min(S, 0.9);
      if (p.m_sink + p.m_near + p.m_far > 0.98) {
        const double sc = (0.98 - p.m_sink) / (p.m_near + p.m_far);
        p.m_near *= sc, p.m_far *= sc;
      }
      // 2. Heavy hitters vs background: the share of the exposure-normalised far column
      //    mass held by the top 5% of keys; a log-normal background alone gives ~0.1.
      double x_hh = 0.3;
      {
        std::vector<double> c;
        for (int j = kSinkKeys; j <= ctx; ++j)
          if (far_cnt[j] > 0) c.push_back(far_col[h][j] / far_cnt[j]);
        if (c.size() >= 20) {
          const size_t top = std::max<size_t>(1, c.size() / 20);
          std::nth_element(c.begin(), c.begin() + static_cast<long>(top - 1), c.end(), std::greater<double>());
          const double tot = std::accumulate(c.begin(), c.end(), 0.0);
          double tp = 0;
          for (size_t t = 0; t < top; ++t) tp += c[t];
          if (tot > 0) x_hh = std::clamp((tp / tot - 0.1) / 0.9, 0.0, 1.0);
        }
      }
      const double rest = 1.0 - p.m_sink - p.m_near - p.m_far;
      p.m_hh = x_hh * rest;
      p.m_bg = (1 - x_hh) * rest;
      normalise_masses(p);
      p.noise = kFitNoise;
      // 3. Calibration on the stored rows' positions: m_sink to the sink mass, then the
      //    focus share (or, if the rows are flatter than the focus-free model, a shift of
      //    local mass to the background) to the mean entropy; three rounds.
      BaseRows br;
      for (int round = 0; round < 3; ++round) {
        auto sink_of = [&](double ms) {
          br.eval(gen, l, h, with_sink(p, ms), qs);
          return br.sink;
        };
        double ms;
        if (sink_of(0.0) >= S) ms = 0.0;
        else if (sink_of(0.95) <= S) ms = 0.95;
        else ms = bisect(sink_of, 0.0, 0.95, S, true);
        p = with_sink(p, ms);
        br.eval(gen, l, h, p, qs);
        if (br.entropy(0.0) <= E) {
          auto ent_f = [&](double fl) {
            br.eval(gen, l, h, flatten(p, fl), qs);
            return br.entropy(0.0);
          };
          const double fl = ent_f(1.0) <= E ? 1.0 : bisect(ent_f, 0.0, 1.0, E, true);
          p = flatten(p, fl);
          p.focus = 0;
        } else {
          auto ent_c = [&](double c) { return br.entropy(c); };
          p.focus = ent_c(kMaxFocus) >= E ? kMaxFocus : bisect(ent_c, 0.0, kMaxFocus, E, false, 20);
        }
      }
      br.eval(gen, l, h, p, qs);
      p.base = LSE - (br.lse_off - std::log(1.0 - p.focus));
      f.fit_sink[i] = br.sink;
      f.fit_entropy[i] = br.entropy(p.focus);
      f.heads[i] = p;
    }
  }
  return f;
}

Model model_from_fit(const FitResult& f, int n_layers, int n_heads, int n_kv_heads) {
  Model m;
  m.n_layers = n_layers, m.n_heads = n_heads, m.n_kv_heads = n_kv_heads;
  for (int l = 0; l < n_layers; ++l) {
    const int lr = n_layers > 1 ? static_cast<int>(std::lround(static_cast<double>(l) * (f.n_layers - 1) / (n_layers - 1))) : 0;
    for (int h = 0; h < n_heads; ++h) {
      const int hr = static_cast<int>(static_cast<int64_t>(h) * f.n_heads / n_heads);
      m.heads.push_back(f.heads[static_cast<size_t>(lr) * f.n_heads + hr]);
    }
    for (int g = 0; g < n_kv_heads; ++g) m.kv.push_back(KvParams{kFitDensity, kFitZipf});
  }
  return m;
}

// ---------------------------------------------------------------------------------------
// The command

void validate(const Options& o) {
  find_shape(o.shape);
  if (o.context < 1) throw Error("synth: --context must be at least 1 (got " + std::to_string(o.context) + ")");
  if (o.context > kMaxContext)
    throw Error("synth: --context must be at most " + std::to_string(kMaxContext) + " (got " + std::to_string(o.context) + ")");
  if (o.steps < 1) throw Error("synth: --steps must be at least 1 (got " + std::to_string(o.steps) + ")");
  if (o.steps > o.context)
    throw Error("synth: --steps " + std::to_string(o.steps) + " leaves no prompt: the prefill has --context - --steps + 1 = " +
                std::to_string(o.context - o.steps + 1) + " tokens; --steps must be at most --context (" +
                std::to_string(o.context) + ")");
  if (o.layers < 0 || o.layers > 1024) throw Error("synth: --layers must be in 1..1024 (got " + std::to_string(o.layers) + ")");
  if (o.mode == Mode::TopK && (o.topk < 1 || o.topk > (1 << 24)))
    throw Error("synth: --topk must be in 1..16777216 (got " + std::to_string(o.topk) + ")");
  if (o.prefill_window < 0 || o.prefill_window > (1 << 24))
    throw Error("synth: --prefill-window must be in 0..16777216 (got " + std::to_string(o.prefill_window) + ")");
  if (o.steps_per_chunk < 1 || o.steps_per_chunk > 65536)
    throw Error("synth: --steps-per-chunk must be in 1..65536 (got " + std::to_string(o.steps_per_chunk) + ")");
  if (o.zstd_level < 1 || o.zstd_level > 22)
    throw Error("synth: --zstd-level must be in 1..22 (got " + std::to_string(o.zstd_level) + ")");
  if (o.threads < 0) throw Error("synth: --threads must be at least 0 (got " + std::to_string(o.threads) + ")");
}

namespace {

// Mean of every head parameter per layer (what the header records of the draws).
json layer_summary(const Model& m) {
  json out = json::array();
  for (int l = 0; l < m.n_layers; ++l) {
    double acc[16] = {};
    for (int h = 0; h < m.n_heads; ++h) {
      const HeadParams& p = m.head(l, h);
      const double v[16] = {p.m_sink, p.m_near, p.m_far, p.m_per, p.m_hh, p.m_bg, double(p.n_sink), p.sink_ratio,
                            p.tau_near, double(p.near_peak), p.tau_far, double(p.period), p.period_decay, p.noise, p.base, p.focus};
      for (int i = 0; i < 16; ++i) acc[i] += v[i] / m.n_heads;
    }
    double dens = 0, zipf = 0;
    for (int g = 0; g < m.n_kv_heads; ++g) dens += m.kvp(l, g).density / m.n_kv_heads, zipf += m.kvp(l, g).zipf / m.n_kv_heads;
    auto r = [](double x) { return std::round(x * 1e4) / 1e4; };
    out.push_back({{"layer", l},
                   {"m_sink", r(acc[0])},
                   {"m_near", r(acc[1])},
                   {"m_far", r(acc[2])},
                   {"m_per", r(acc[3])},
                   {"m_hh", r(acc[4])},
                   {"m_bg", r(acc[5])},
                   {"n_sink", r(acc[6])},
                   {"sink_ratio", r(acc[7])},
                   {"tau_near", r(acc[8])},
                   {"near_peak", r(acc[9])},
                   {"tau_far", r(acc[10])},
                   {"period", r(acc[11])},
                   {"period_decay", r(acc[12])},
                   {"noise", r(acc[13])},
                   {"focus", r(acc[15])},
                   {"base", r(acc[14])},
                   {"hh_density", r(dens)},
                   {"zipf", r(zipf)}});
  }
  return out;
}

}  // namespace

Summary synthesize(const Options& o, const std::string& out, const std::function<void(int, int)>& progress) {
  validate(o);
  using clk = std::chrono::steady_clock;
  const auto t0 = clk::now();
  const Shape& s = find_shape(o.shape);
  const int L = o.layers > 0 ? o.layers : s.n_layers, H = s.n_heads, G = s.n_kv_heads, group = H / G;
  const int C = o.context, N = o.steps, P = C - N + 1;
  FitResult fit;
  Model model;
  if (!o.fit.empty()) {
    try {
      fit = fit_trace(o.fit, o.seed);
    } catch (const Error& e) {
      throw Error(std::string("synth: --fit: ") + e.what());
    }
    model = model_from_fit(fit, L, H, G);
  } else {
    model = draw_model(L, H, G, o.seed);
  }
  const auto t_fit = clk::now();
  Generator gen(model, C, o.seed);

  ModelConfig cfg;
  cfg.arch = "llama";
  cfg.format = "synthetic";
  cfg.name = s.name;
  cfg.dim = s.dim;
  cfg.hidden_dim = s.hidden_dim;
  cfg.n_layers = L;
  cfg.n_heads = H;
  cfg.n_kv_heads = G;
  cfg.head_dim = s.head_dim;
  cfg.vocab_size = s.vocab_size;
  cfg.max_seq_len = std::max(s.max_seq_len, C);
  cfg.rope_theta = s.rope_theta;
  cfg.rope = s.rope_layout == "halves" ? RopeLayout::Halves : RopeLayout::Interleaved;
  cfg.weight_dtype = "none";
  CaptureSettings cs;
  cs.mode = o.mode;
  cs.topk = o.topk;
  cs.with_qkv = false;
  cs.prefill_window = o.prefill_window;
  cs.steps_per_chunk = o.steps_per_chunk;
  cs.zstd_level = o.zstd_level;

  auto token = [&](int pos) {
    return static_cast<int32_t>(key(o.seed, kTagToken, static_cast<uint64_t>(pos)) % static_cast<uint64_t>(s.vocab_size));
  };
  std::vector<int32_t> prompt(static_cast<size_t>(P));
  for (int i = 0; i < P; ++i) prompt[i] = token(i);
  std::vector<int> kv_of_q(H);
  for (int h = 0; h < H; ++h) kv_of_q[h] = h / group;
  json synth = {{"generator", "kvscope synth (docs/synth.md)"},
                {"model_version", 1},
                {"shape", s.name},
                {"shape_source", s.source},
                {"shape_layers", s.n_layers},
                {"layers", L},
                {"seed", o.seed},
                {"context", C},
                {"steps", N},
                {"prompt_len", P},
                {"fit", o.fit.empty() ? json(nullptr) : fit.to_json()},
                {"per_layer", layer_summary(model)}};
  json header = {{"format", "kvscope-trace"},
                 {"version", kVersion},
                 {"created_by", std::string("kvscope ") + KVSCOPE_VERSION},
                 {"synthetic", true},
                 {"model", config_json(cfg)},
                 {"tokenizer", {{"identity", "synthetic:random-ids"}}},
                 {"gqa", {{"group", group}, {"kv_head_of_q_head", kv_of_q}}},
                 {"prompt_ids", prompt},
                 {"capture",
                  {{"mode", o.mode == Mode::Dense ? "dense" : "topk"},
                   {"topk", o.mode == Mode::TopK ? o.topk : 0},
                   {"with_qkv", false},
                   {"prefill_window", o.prefill_window},
                   {"prob_dtype", "f16"},
                   {"qkv_dtype", "f16"},
                   {"steps_per_chunk", o.steps_per_chunk},
                   {"zstd_level", o.zstd_level},
                   {"device", "synthetic"},
                   {"max_new_tokens", N},
                   {"seed", o.seed}}},
                 {"synth", synth}};
  TraceWriter w(out, header, cfg, cs);

  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  std::vector<int32_t> slot(static_cast<size_t>(C));
  std::iota(slot.begin(), slot.end(), 0);
  std::vector<std::vector<float>> rows(H, std::vector<float>(static_cast<size_t>(C)));
  std::vector<float> lse(H);
  auto report = [&](int l, int q) {
    for (int h = 0; h < H; ++h) {
      cpu::AttentionRecord rec;
      rec.layer = l;
      rec.q_head = h;
      rec.kv_head = h / group;
      rec.query_pos = q;
      rec.probs = std::span<const float>(rows[h].data(), static_cast<size_t>(q) + 1);
      rec.slot_pos = std::span<const int32_t>(slot.data(), static_cast<size_t>(q) + 1);
      rec.lse = lse[h];
      w.on_attention(rec);
    }
  };
  auto compute_rows = [&](int l, int q) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int h = 0; h < H; ++h) lse[h] = gen.row(l, h, q, rows[h].data());
  };

  // Step 0: the prefill. Rows before the stored window enter the column sums in closed
  // form; the window's rows are materialised (and added to the sums by the writer).
  const int n_rows = std::min(o.prefill_window, P), q_end = P - n_rows - 1;
  w.begin_step(0, StepKind::Prefill, static_cast<uint32_t>(P), 0, -1);
  {
    std::vector<std::vector<double>> colsum(H);
    for (int l = 0; l < L; ++l) {
      gen.prepare_layer(l, P - 1);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
      for (int h = 0; h < H; ++h) {
        colsum[h].assign(static_cast<size_t>(P), 0.0);
        gen.prefill_colsum(l, h, q_end, P, colsum[h].data());
      }
      for (int h = 0; h < H; ++h) w.add_prefill_colsum(l, h, colsum[h]);
      for (int q = q_end + 1; q < P; ++q) {
        compute_rows(l, q);
        report(l, q);
      }
    }
  }
  w.end_step();
  const auto t_pre = clk::now();
  if (progress) progress(1, N);
  for (int st = 1; st < N; ++st) {
    const int q = P + st - 1;
    w.begin_step(static_cast<uint32_t>(st), StepKind::Decode, 1, static_cast<uint32_t>(q), token(q));
    for (int l = 0; l < L; ++l) {
      gen.prepare_layer(l, q);
      compute_rows(l, q);
      report(l, q);
    }
    w.end_step();
    if (progress) progress(st + 1, N);
  }
  w.finish();
  const auto t1 = clk::now();
  Summary sum;
  sum.steps = static_cast<uint32_t>(N);
  sum.prompt_len = static_cast<uint32_t>(P);
  sum.context = static_cast<uint32_t>(C);
  sum.bytes = w.bytes_written();
  sum.seconds = std::chrono::duration<double>(t1 - t0).count();
  sum.fit_seconds = std::chrono::duration<double>(t_fit - t0).count();
  sum.prefill_seconds = std::chrono::duration<double>(t_pre - t_fit).count();
  return sum;
}

}  // namespace kvscope::trace::synth
