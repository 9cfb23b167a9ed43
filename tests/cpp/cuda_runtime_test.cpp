// The CUDA path against the CPU reference: model logits on stories260K, the decode kernel
// on random paged data with dead slots, evicted and offloaded pages, prefill records and
// column sums, the .kvt files both write, and the GPU KV cache's evict/offload/fetch.
// Every test skips (with the reason) where there is no GPU; in builds without the CUDA
// path this file compiles to nothing.
#ifdef KVSCOPE_HAVE_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kv_cache.h"
#include "kernels/cpu/runtime.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/kv_cache.h"
#include "kernels/cuda/runtime.h"
#include "kernels/io/halfs.h"
#include "kernels/model/model.h"
#include "traces/reader.h"
#include "traces/writer.h"

namespace fs = std::filesystem;
using namespace kvscope;

namespace {

#define REQUIRE_GPU()                                                                               \
  do {                                                                                              \
    std::string why_;                                                                               \
    if (cuda::list_devices(&why_).empty()) GTEST_SKIP() << "no CUDA device (" << why_ << "): GPU test skipped"; \
  } while (0)

std::string source_dir() {
  if (const char* e = std::getenv("KVSCOPE_SOURCE_DIR"); e && *e) return e;
  return KVSCOPE_SOURCE_DIR;
}

std::string stories_path() {
  if (const char* e = std::getenv("KVSCOPE_MODELS"); e && *e) return (fs::path(e) / "stories260K" / "stories260K.bin").string();
  return (fs::path(source_dir()) / ".." / "shared" / "models" / "stories260K" / "stories260K.bin").lexically_normal().string();
}

#define REQUIRE_STORIES(path)                                                                  \
  const std::string path = stories_path();                                                      \
  if (!fs::exists(path)) GTEST_SKIP() << "stories260K not found at " << path << " (set KVSCOPE_MODELS)"

float round_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

// Logits tolerance for fp16 weights/activations with fp32 accumulation: relative to the
// row's largest magnitude.
double max_rel_diff(std::span<const float> a, std::span<const float> b) {
  double mx = 1.0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, static_cast<double>(std::fabs(a[i])));
    d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return d / mx;
}

const std::vector<int32_t> kPrompt = {1, 403, 407, 261, 378, 395, 290, 280, 265, 272, 301, 269, 351, 267, 261, 340, 259, 347};

}  // namespace

TEST(CudaDevice, ListsOrExplains) {
  std::string why;
  const auto devs = cuda::list_devices(&why);
  if (devs.empty()) {
    EXPECT_FALSE(why.empty());
    GTEST_SKIP() << "no CUDA device (" << why << ")";
  }
  EXPECT_GT(devs[0].total_mem, 0u);
  std::printf("device 0: %s sm_%d%d, %.1f GiB, driver %d, runtime %d\n", devs[0].name.c_str(), devs[0].sm_major, devs[0].sm_minor,
              devs[0].total_mem / 1073741824.0, devs[0].driver_version, devs[0].runtime_version);
}

TEST(CudaRuntime, LogitsMatchCpuOnStories260K) {
  REQUIRE_GPU();
  REQUIRE_STORIES(path);
  const Model m = load_model(path);
  cpu::Runtime cr(m, {.threads = 2});
  cuda::Runtime gr(m);
  auto a = cr.prefill(kPrompt);
  std::vector<float> ca(a.begin(), a.end());
  auto b = gr.prefill(kPrompt);
  double worst = max_rel_diff(ca, b);
  int agree = cpu::argmax(ca) == cpu::argmax(b);
  int32_t tok = cpu::argmax(ca);
  const int steps = 60;
  for (int s = 0; s < steps; ++s) {
    auto x = cr.decode(tok);
    std::vector<float> cx(x.begin(), x.end());
    auto y = gr.decode(tok);
    worst = std::max(worst, max_rel_diff(cx, y));
    agree += cpu::argmax(cx) == cpu::argmax(y);
    tok = cpu::argmax(cx);  // teacher-forced by the CPU
  }
  std::printf("stories260K: worst |gpu-cpu| / max|cpu| over %d steps: %.3g; argmax agrees on %d/%d\n", steps + 1, worst, agree, steps + 1);
  EXPECT_LT(worst, 2e-2);
  EXPECT_GE(agree, steps - 2);
  EXPECT_EQ(gr.pos(), cr.pos());
  // reset() starts over and gives the same prefill logits.
  gr.reset();
  auto c = gr.prefill(kPrompt);
  EXPECT_LT(max_rel_diff(ca, c), 2e-2);
}

namespace {

// A cache filled with random fp16-exact K/V, then holes, an evicted page and offloaded pages.
struct RandomCache {
  int n_layers, n_kv, hd, B, max_tokens;
  std::unique_ptr<cuda::KVCache> kv;
  RandomCache(int layers, int n_kv_, int hd_, int B_, int n_tokens, uint32_t seed) : n_layers(layers), n_kv(n_kv_), hd(hd_), B(B_) {
    max_tokens = n_tokens + 64;
    kv = std::make_unique<cuda::KVCache>(layers, n_kv, hd, B, max_tokens);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> k(static_cast<size_t>(n_kv) * hd), v(k.size());
    for (int l = 0; l < layers; ++l)
      for (int p = 0; p < n_tokens; ++p) {
        for (auto& x : k) x = round_f16(u(rng));
        for (auto& x : v) x = round_f16(u(rng));
        kv->append(l, p, k.data(), v.data());
      }
  }
};

struct RefRow {
  std::vector<float> out, probs;
  float lse;
};

// fp64 reference of one head's attention over the resident, live, causal slots.
RefRow reference(const cuda::KVCache& kv, int l, int kvh, const float* q, int32_t qpos, float scale) {
  const int n = kv.n_slots(l, kvh), hd = kv.head_dim();
  std::vector<double> sc(n, -INFINITY);
  std::vector<std::vector<float>> vs(n);
  double mx = -INFINITY;
  std::vector<float> k(hd), v(hd);
  for (int s = 0; s < n; ++s) {
    if (!kv.resident(l, kvh, s) || kv.pos(l, kvh, s) > qpos) continue;
    kv.read_slot(l, kvh, s, k.data(), v.data());
    double d = 0;
    for (int i = 0; i < hd; ++i) d += static_cast<double>(q[i]) * k[i];
    sc[s] = d * scale;
    vs[s] = v;
    mx = std::max(mx, sc[s]);
  }
  RefRow r;
  r.out.assign(hd, 0);
  r.probs.assign(n, 0);
  double sum = 0;
  for (int s = 0; s < n; ++s)
    if (sc[s] != -INFINITY) sum += std::exp(sc[s] - mx);
  r.lse = sum > 0 ? static_cast<float>(mx + std::log(sum)) : -INFINITY;
  std::vector<double> o(hd, 0);
  for (int s = 0; s < n; ++s) {
    if (sc[s] == -INFINITY) continue;
    const double p = std::exp(sc[s] - mx) / sum;
    r.probs[s] = static_cast<float>(p);
    for (int i = 0; i < hd; ++i) o[i] += p * vs[s][i];
  }
  for (int i = 0; i < hd; ++i) r.out[i] = static_cast<float>(o[i]);
  return r;
}

template <typename T>
T* dev_alloc(size_t n) {
  T* p = nullptr;
  KVS_CUDA(cudaMalloc(&p, sizeof(T) * n));
  return p;
}

void check_decode(int hd, int group, int batch) {
  const int n_kv = 2, H = n_kv * group, B = 16, n_tokens = 300;
  RandomCache rc(batch, n_kv, hd, B, n_tokens, 7 + hd + group);
  cuda::KVCache& kv = *rc.kv;
  // Holes, an evicted page, offloaded pages, in every sequence ("layer" = sequence).
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < n_kv; ++h) {
      for (int p = 3; p < n_tokens; p += 7) kv.evict_token(b, h, p);
      kv.evict_page(b, h, 2 + h);
      kv.offload_page(b, h, 5);
      kv.offload_page(b, h, 9);
    }
  kv.fetch_page(0, 0, 9);  // and one brought back
  const int32_t qpos = n_tokens - 40;  // later slots are masked as "future" tokens
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> q(static_cast<size_t>(batch) * H * hd);
  for (auto& x : q) x = u(rng);
  const int stride = kv.max_pages() * B;
  float* dq = dev_alloc<float>(q.size());
  float* dout = dev_alloc<float>(q.size());
  float* dlse = dev_alloc<float>(static_cast<size_t>(batch) * H);
  float* dprobs = dev_alloc<float>(static_cast<size_t>(batch) * H * stride);
  const int64_t sf = cuda::decode_scratch_floats(batch, H, hd);
  float* dscr = dev_alloc<float>(sf);
  KVS_CUDA(cudaMemcpy(dq, q.data(), sizeof(float) * q.size(), cudaMemcpyHostToDevice));
  cuda::DecodeArgs a;
  a.kv = kv.view();
  a.q = dq;
  a.out = dout;
  a.lse = dlse;
  a.batch = batch;
  a.n_heads = H;
  a.n_kv_heads = n_kv;
  a.stream0 = 0;
  a.batch_stream_stride = n_kv;
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < n_kv; ++h) a.max_pages_used = std::max(a.max_pages_used, kv.n_pages(b, h));
  a.qpos = qpos;
  a.scale = scale;
  a.emit.probs = dprobs;
  a.emit.stride = stride;
  a.scratch = dscr;
  a.scratch_floats = sf;
  cuda::launch_decode_attention(a, kv.stream());
  KVS_CUDA(cudaStreamSynchronize(kv.stream()));
  std::vector<float> out(q.size()), lse(static_cast<size_t>(batch) * H), probs(static_cast<size_t>(batch) * H * stride);
  KVS_CUDA(cudaMemcpy(out.data(), dout, sizeof(float) * out.size(), cudaMemcpyDeviceToHost));
  KVS_CUDA(cudaMemcpy(lse.data(), dlse, sizeof(float) * lse.size(), cudaMemcpyDeviceToHost));
  KVS_CUDA(cudaMemcpy(probs.data(), dprobs, sizeof(float) * probs.size(), cudaMemcpyDeviceToHost));
  double worst_out = 0, worst_p = 0, worst_lse = 0;
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < H; ++h) {
      const int kvh = h / group;
      const RefRow r = reference(kv, b, kvh, q.data() + (static_cast<size_t>(b) * H + h) * hd, qpos, scale);
      const size_t row = static_cast<size_t>(b) * H + h;
      for (int i = 0; i < hd; ++i) worst_out = std::max(worst_out, static_cast<double>(std::fabs(out[row * hd + i] - r.out[i])));
      worst_lse = std::max(worst_lse, static_cast<double>(std::fabs(lse[row] - r.lse)));
      for (int s = 0; s < kv.n_slots(b, kvh); ++s) {
        const float p = probs[row * stride + s];
        worst_p = std::max(worst_p, static_cast<double>(std::fabs(p - r.probs[s])));
        if (!kv.resident(b, kvh, s) || kv.pos(b, kvh, s) > qpos) {
          ASSERT_EQ(p, 0.0f) << "slot " << s << " must have probability 0";
        }
      }
    }
  std::printf("decode hd %d group %d batch %d: max |out| err %.2e, |lse| err %.2e, |p| err %.2e\n", hd, group, batch, worst_out, worst_lse, worst_p);
  EXPECT_LT(worst_out, 1e-4);
  EXPECT_LT(worst_lse, 1e-4);
  EXPECT_LT(worst_p, 1e-5);
  for (void* p : {static_cast<void*>(dq), static_cast<void*>(dout), static_cast<void*>(dlse), static_cast<void*>(dprobs), static_cast<void*>(dscr)})
    cudaFree(p);
}

}  // namespace

TEST(CudaAttention, DecodeMatchesReferenceWithHolesEvictedAndOffloadedPages) {
  REQUIRE_GPU();
  check_decode(128, 4, 1);
  check_decode(128, 4, 3);
  check_decode(64, 2, 2);
  check_decode(8, 2, 1);
  check_decode(256, 8, 1);
  check_decode(32, 1, 2);
}

TEST(CudaKVCache, EvictOffloadFetchRoundTripMirrorsCpuCache) {
  REQUIRE_GPU();
  const int L = 2, n_kv = 2, hd = 16, B = 4, N = 37;
  cuda::KVCache g(L, n_kv, hd, B, 64);
  cpu::KVCache c(L, n_kv, hd, B, 64);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> k(n_kv * hd), v(k.size());
  for (int l = 0; l < L; ++l)
    for (int p = 0; p < N; ++p) {
      for (auto& x : k) x = round_f16(u(rng));
      for (auto& x : v) x = round_f16(u(rng));
      g.append(l, 10 + 2 * p, k.data(), v.data());
      c.append(l, 10 + 2 * p, k.data(), v.data());
    }
  auto same = [&](const char* when) {
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < n_kv; ++h) {
        ASSERT_EQ(g.n_slots(l, h), c.n_slots(l, h)) << when;
        ASSERT_EQ(g.n_live(l, h), c.n_live(l, h)) << when;
        ASSERT_EQ(g.n_pages(l, h), c.n_pages(l, h)) << when;
        std::vector<float> gk(hd), gv(hd);
        for (int s = 0; s < g.n_slots(l, h); ++s) {
          ASSERT_EQ(g.pos(l, h, s), c.pos(l, h, s)) << when;
          ASSERT_EQ(g.live(l, h, s), c.live(l, h, s)) << when;
          g.read_slot(l, h, s, gk.data(), gv.data());
          for (int i = 0; i < hd; ++i) {
            ASSERT_EQ(gk[i], c.k(l, h, s)[i]) << when << " slot " << s;
            ASSERT_EQ(gv[i], c.v(l, h, s)[i]) << when << " slot " << s;
          }
        }
        for (int32_t p = 0; p < 100; ++p) ASSERT_EQ(g.find(l, h, p), c.find(l, h, p)) << when << " pos " << p;
      }
    EXPECT_EQ(g.live_tokens(), c.live_tokens()) << when;
  };
  same("after append");
  EXPECT_TRUE(g.evict_token(0, 1, 14));
  EXPECT_TRUE(c.evict_token(0, 1, 14));
  EXPECT_FALSE(g.evict_token(0, 1, 14));
  EXPECT_FALSE(g.evict_token(0, 1, 15));  // never stored
  g.evict_page(1, 0, 2);
  c.evict_page(1, 0, 2);
  same("after evictions");
  const int in_use = g.pages_in_use();
  g.offload_page(0, 1, 3);
  g.offload_page(1, 1, 0);
  EXPECT_TRUE(g.offloaded(0, 1, 3));
  EXPECT_FALSE(g.resident(0, 1, 3 * B));
  EXPECT_EQ(g.pages_in_use(), in_use - 2);
  EXPECT_EQ(g.host_pages_in_use(), 2);
  EXPECT_EQ(g.bytes_offloaded(), 2u * 2 * B * hd * sizeof(uint16_t));
  same("while offloaded (read from the host pool)");
  EXPECT_TRUE(g.evict_token(0, 1, 10 + 2 * (3 * B + 1)));  // a token of the offloaded page
  EXPECT_TRUE(c.evict_token(0, 1, 10 + 2 * (3 * B + 1)));
  EXPECT_THROW(g.offload_page(0, 1, 3), Error);
  g.fetch_page(0, 1, 3);
  g.fetch_page(1, 1, 0);
  EXPECT_THROW(g.fetch_page(0, 1, 3), Error);
  EXPECT_EQ(g.bytes_fetched(), g.bytes_offloaded());
  EXPECT_EQ(g.host_pages_in_use(), 0);
  EXPECT_EQ(g.pages_in_use(), in_use);
  same("after fetch");
  g.offload_page(0, 0, 1);
  g.evict_page(0, 0, 1);  // an offloaded page can be evicted outright
  c.evict_page(0, 0, 1);
  EXPECT_EQ(g.host_pages_in_use(), 0);
  same("after evicting an offloaded page");
  g.clear();
  EXPECT_EQ(g.pages_in_use(), 0);
  EXPECT_EQ(g.live_tokens(), 0);
}

namespace {

// Keeps every record (copies), as the runtime reported them, in order.
struct Recorder : cpu::AttentionObserver {
  struct Rec {
    int layer, q_head;
    int32_t qpos;
    float lse;
    std::vector<float> probs, k, v;
    std::vector<int32_t> slot_pos;
  };
  int hd = 0;
  std::vector<Rec> recs;
  void on_attention(const cpu::AttentionRecord& r) override {
    Rec x{r.layer, r.q_head, r.query_pos, r.lse, {r.probs.begin(), r.probs.end()}, {}, {}, {r.slot_pos.begin(), r.slot_pos.end()}};
    if (r.k) x.k.assign(r.k, r.k + hd);
    if (r.v) x.v.assign(r.v, r.v + hd);
    recs.push_back(std::move(x));
  }
};

}  // namespace

TEST(CudaRuntime, PrefillRecordsAndColumnSumsMatchCpu) {
  REQUIRE_GPU();
  REQUIRE_STORIES(path);
  const Model m = load_model(path);
  const ModelConfig& c = m.config;
  const int P = static_cast<int>(kPrompt.size()), W = 5, H = c.n_heads, group = c.group();
  Recorder cr_rec, gr_rec;
  cr_rec.hd = gr_rec.hd = c.head_dim;
  cpu::Runtime cr(m, {.threads = 2});
  cr.set_observer(&cr_rec);
  cr.prefill(kPrompt);
  cuda::Runtime gr(m);
  std::vector<std::vector<double>> colsum(static_cast<size_t>(c.n_layers) * H);
  gr.set_observer(&gr_rec, {.full_rows = W,
                            .add_colsum = [&](int l, int h, std::span<const double> s) { colsum[static_cast<size_t>(l) * H + h].assign(s.begin(), s.end()); },
                            .records_for_kv = true});
  gr.prefill(kPrompt);
  gr.drain();
  // CPU: every row; its column sums over the rows before the window are the reference.
  ASSERT_EQ(cr_rec.recs.size(), static_cast<size_t>(c.n_layers) * P * H);
  std::vector<double> ref(static_cast<size_t>(c.n_layers) * H * P, 0.0);
  for (const auto& r : cr_rec.recs)
    if (r.qpos < P - W)
      for (int j = 0; j < P; ++j) ref[(static_cast<size_t>(r.layer) * H + r.q_head) * P + j] += r.probs[j];
  double worst_cs = 0;
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < H; ++h) {
      const auto& g = colsum[static_cast<size_t>(l) * H + h];
      ASSERT_EQ(g.size(), static_cast<size_t>(P));
      for (int j = 0; j < P; ++j) worst_cs = std::max(worst_cs, std::fabs(g[j] - ref[(static_cast<size_t>(l) * H + h) * P + j]));
    }
  // GPU records: in (layer, query, head) order; full rows for the window, zero rows for
  // the first head of each group before it (carrying K/V).
  size_t gi = 0;
  double worst_p = 0, worst_lse = 0, worst_kv = 0;
  for (const auto& r : cr_rec.recs) {
    const bool full = r.qpos >= P - W;
    if (!full && r.q_head % group != 0) continue;
    ASSERT_LT(gi, gr_rec.recs.size());
    const auto& g = gr_rec.recs[gi++];
    ASSERT_EQ(g.layer, r.layer);
    ASSERT_EQ(g.q_head, r.q_head);
    ASSERT_EQ(g.qpos, r.qpos);
    ASSERT_EQ(g.slot_pos, r.slot_pos);
    ASSERT_EQ(g.probs.size(), r.probs.size());
    for (size_t j = 0; j < g.probs.size(); ++j) {
      if (full) worst_p = std::max(worst_p, static_cast<double>(std::fabs(g.probs[j] - r.probs[j])));
      else ASSERT_EQ(g.probs[j], 0.0f);
    }
    if (full) worst_lse = std::max(worst_lse, static_cast<double>(std::fabs(g.lse - r.lse)));
    for (int i = 0; i < c.head_dim; ++i) worst_kv = std::max({worst_kv, static_cast<double>(std::fabs(g.k[i] - r.k[i])), static_cast<double>(std::fabs(g.v[i] - r.v[i]))});
  }
  EXPECT_EQ(gi, gr_rec.recs.size());
  std::printf("prefill P=%d W=%d: colsum err %.2e, prob err %.2e, lse err %.2e, K/V err %.2e\n", P, W, worst_cs, worst_p, worst_lse, worst_kv);
  // fp16 weights, activations and KV on the GPU against fp32 on the CPU.
  EXPECT_LT(worst_cs, 5e-2);
  EXPECT_LT(worst_p, 2e-2);
  EXPECT_LT(worst_lse, 5e-2);
  EXPECT_LT(worst_kv, 5e-2);
}

TEST(CudaTrace, SameFileSemanticsAsCpuCapture) {
  REQUIRE_GPU();
  REQUIRE_STORIES(path);
  const Model m = load_model(path);
  const ModelConfig& c = m.config;
  trace::CaptureSettings cs;
  cs.with_qkv = true;
  cs.prefill_window = 6;
  cs.steps_per_chunk = 4;
  const fs::path dir = fs::temp_directory_path();
  const std::string cpu_path = (dir / "kvscope_cuda_test_cpu.kvt").string(), gpu_path = (dir / "kvscope_cuda_test_gpu.kvt").string();
  const int P = static_cast<int>(kPrompt.size()), steps = 12;
  std::vector<int32_t> toks;
  {  // CPU capture, greedy; its tokens are replayed on the GPU
    cpu::Runtime rt(m, {.threads = 2});
    trace::TraceWriter w(cpu_path, trace::TraceWriter::make_header(m, kPrompt, cs, {{"device", "cpu"}}), c, cs);
    rt.set_observer(&w);
    w.begin_step(0, trace::StepKind::Prefill, P, 0, -1);
    auto lg = rt.prefill(kPrompt);
    w.end_step();
    for (int s = 1; s < steps; ++s) {
      const int32_t t = cpu::argmax(lg);
      toks.push_back(t);
      w.begin_step(s, trace::StepKind::Decode, 1, P + s - 1, t);
      lg = rt.decode(t);
      w.end_step();
    }
    w.finish();
  }
  {
    cuda::Runtime rt(m);
    trace::TraceWriter w(gpu_path, trace::TraceWriter::make_header(m, kPrompt, cs, {{"device", "cuda"}}), c, cs);
    rt.set_observer(&w, {.full_rows = cs.prefill_window,
                         .add_colsum = [&w](int l, int h, std::span<const double> s) { w.add_prefill_colsum(l, h, s); },
                         .records_for_kv = true});
    rt.post([&] { w.begin_step(0, trace::StepKind::Prefill, P, 0, -1); });
    rt.prefill(kPrompt);
    rt.post([&] { w.end_step(); });
    for (int s = 1; s < steps; ++s) {
      const int32_t t = toks[s - 1];
      rt.post([&w, s, P, t] { w.begin_step(s, trace::StepKind::Decode, 1, P + s - 1, t); });
      rt.decode(t);
      rt.post([&w] { w.end_step(); });
    }
    rt.drain();
    w.finish();
  }
  trace::TraceReader a(cpu_path), b(gpu_path);
  ASSERT_TRUE(b.complete());
  ASSERT_EQ(a.n_steps(), b.n_steps());
  trace::LayerFrame fa, fb;
  double worst_p = 0, worst_cs = 0, worst_lse = 0, worst_qkv = 0;
  for (uint32_t s = 0; s < a.n_steps(); ++s)
    for (uint32_t l = 0; l < static_cast<uint32_t>(c.n_layers); ++l) {
      const auto va = a.step_layer(s, l, fa);
      const auto vb = b.step_layer(s, l, fb);
      ASSERT_EQ(va.n_rows, vb.n_rows);
      ASSERT_EQ(va.n_queries, vb.n_queries);
      ASSERT_EQ(va.token, vb.token);
      if (va.colsum)
        for (uint32_t i = 0; i < static_cast<uint32_t>(c.n_heads) * va.n_queries; ++i)
          worst_cs = std::max(worst_cs, static_cast<double>(std::fabs(va.colsum[i] - vb.colsum[i])));
      for (uint32_t r = 0; r < va.n_rows; ++r)
        for (uint32_t h = 0; h < static_cast<uint32_t>(c.n_heads); ++h) {
          const auto& ra = va.row(r, h, c.n_heads);
          const auto& rb = vb.row(r, h, c.n_heads);
          ASSERT_EQ(ra.n, rb.n);
          ASSERT_EQ(ra.qpos, rb.qpos);
          worst_lse = std::max(worst_lse, static_cast<double>(std::fabs(ra.lse - rb.lse)));
          for (uint32_t j = 0; j < ra.n; ++j)
            worst_p = std::max(worst_p, static_cast<double>(std::fabs(f16_to_f32(ra.probs[j]) - f16_to_f32(rb.probs[j]))));
        }
      ASSERT_TRUE(va.k && vb.k && va.q && vb.q);
      const size_t nk = static_cast<size_t>(va.n_queries) * c.n_kv_heads * c.head_dim, nq = static_cast<size_t>(va.n_rows) * c.n_heads * c.head_dim;
      for (size_t i = 0; i < nk; ++i)
        worst_qkv = std::max({worst_qkv, static_cast<double>(std::fabs(f16_to_f32(va.k[i]) - f16_to_f32(vb.k[i]))),
                              static_cast<double>(std::fabs(f16_to_f32(va.v[i]) - f16_to_f32(vb.v[i])))});
      for (size_t i = 0; i < nq; ++i) worst_qkv = std::max(worst_qkv, static_cast<double>(std::fabs(f16_to_f32(va.q[i]) - f16_to_f32(vb.q[i]))));
    }
  std::printf("trace cpu vs cuda (%u steps): prob err %.2e, colsum err %.2e, lse err %.2e, Q/K/V err %.2e\n", a.n_steps(), worst_p, worst_cs,
              worst_lse, worst_qkv);
  EXPECT_LT(worst_p, 2e-2);
  EXPECT_LT(worst_cs, 5e-2);
  EXPECT_LT(worst_lse, 5e-2);
  EXPECT_LT(worst_qkv, 5e-2);
  fs::remove(cpu_path);
  fs::remove(gpu_path);
}

TEST(CudaRuntime, ObserverErrorsSurfaceOnDrain) {
  REQUIRE_GPU();
  REQUIRE_STORIES(path);
  const Model m = load_model(path);
  struct Throwing : cpu::AttentionObserver {
    void on_attention(const cpu::AttentionRecord&) override { throw Error("observer says no"); }
  } obs;
  cuda::Runtime rt(m);
  rt.set_observer(&obs);
  rt.prefill(kPrompt);
  EXPECT_THROW(rt.drain(), Error);
  rt.set_observer(nullptr);
  EXPECT_NO_THROW(rt.decode(5));
}

#endif  // KVSCOPE_HAVE_CUDA
