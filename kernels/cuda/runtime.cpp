#include "kernels/cuda/runtime.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/io/halfs.h"

namespace kvscope::cuda {

namespace {

#define KVS_CUBLAS(call)                                                                                           \
  do {                                                                                                             \
    const cublasStatus_t kvs_s_ = (call);                                                                          \
    if (kvs_s_ != CUBLAS_STATUS_SUCCESS)                                                                           \
      throw Error(std::string("cublas: ") + #call + ": " + cublasGetStatusString(kvs_s_) + " (" + __FILE__ + ")"); \
  } while (0)

uint16_t to_bf16(float f) {  // round to nearest even (no NaNs in weights)
  const uint32_t x = std::bit_cast<uint32_t>(f);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Device memory that grows (contents are not kept) and frees itself.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t cap = 0;
  void reserve(size_t n) {
    if (n <= cap) return;
    if (p) KVS_CUDA(cudaFree(p));
    p = nullptr;
    KVS_CUDA(cudaMalloc(&p, sizeof(T) * n));
    cap = n;
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
};

struct HostBuf {  // pinned, grows
  uint8_t* p = nullptr;
  size_t cap = 0;
  void reserve(size_t n) {
    if (n <= cap) return;
    if (p) KVS_CUDA(cudaFreeHost(p));
    p = nullptr;
    KVS_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&p), n, cudaHostAllocDefault));
    cap = n;
  }
  ~HostBuf() {
    if (p) cudaFreeHost(p);
  }
};

void* upload_half(const std::vector<float>& w, HalfType ht) {
  std::vector<uint16_t> h(w.size());
  if (ht == HalfType::F16) floats_to_halves(w.data(), h.data(), w.size());
  else
    for (size_t i = 0; i < w.size(); ++i) h[i] = to_bf16(w[i]);
  void* d = nullptr;
  KVS_CUDA(cudaMalloc(&d, h.size() * sizeof(uint16_t)));
  KVS_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
  return d;
}

float* upload_f32(const std::vector<float>& w) {
  float* d = nullptr;
  KVS_CUDA(cudaMalloc(&d, w.size() * sizeof(float)));
  KVS_CUDA(cudaMemcpy(d, w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

struct LayerDev {
  float* attn_norm = nullptr;
  float* ffn_norm = nullptr;
  void *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr, *w_gate = nullptr, *w_up = nullptr, *w_down = nullptr;
};

// One layer's slice of a pinned set, in floats from the set's base.
struct LayerSlice {
  size_t probs = 0, lse = 0, colsum = 0, q = 0, k = 0, v = 0;
};

// What the emission thread needs to turn a pinned set into records.
struct Job {
  int set = -1;
  int T = 0;
  int32_t pos0 = 0;
  int rows = 0;         // rows in full, the last `rows` queries
  bool summed = false;  // column sums for the others
  int n_max = 0;        // probs stride of every layer
  size_t floats = 0;    // arena size
  std::vector<LayerSlice> slices;
  std::vector<std::vector<int32_t>> slot_pos;  // [layer * n_kv + kvh]
  std::function<void()> fn;                   // a posted function instead of a job
};

}  // namespace

struct Runtime::Impl {
  const Model& model;
  const ModelConfig& c;
  RuntimeOptions opt;
  std::string device_name;
  cudaStream_t compute = nullptr, copy = nullptr;
  cublasHandle_t blas = nullptr;
  cudaDataType_t wtype = CUDA_R_16F;
  std::vector<LayerDev> layers;
  float* embed = nullptr;
  float* final_norm = nullptr;
  void* classifier = nullptr;
  float *rope_cos = nullptr, *rope_sin = nullptr;
  std::unique_ptr<KVCache> kv;
  int32_t pos = 0;
  // activations
  DevBuf<int32_t> tokens;
  DevBuf<float> x, q, k, v, att, gate, up, logits, lse, scratch;
  DevBuf<uint16_t> xb;  // 16-bit GEMM input
  HostBuf h_logits;
  // emission
  cpu::AttentionObserver* observer = nullptr;
  PrefillReport report;
  // Step s writes its records into device arena s mod 2 (the attention kernels write
  // probabilities, lse and column sums there directly; one gather launch per layer adds
  // Q/K/V), then one copy moves the arena to pinned set s mod 2. The host thread frees
  // the pair once it handed the records over, so no GPU-side wait is ever needed.
  DevBuf<float> arena[2];
  HostBuf sets[2];
  cudaEvent_t arena_ready = nullptr;
  cudaEvent_t set_copied[2] = {nullptr, nullptr};
  bool set_busy[2] = {false, false};
  int next_set = 0;
  std::vector<float> zeros;
  std::vector<double> colsum_d;
  double wait_s = 0;
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> queue;
  bool working = false, stop = false;
  std::string error;

  Impl(const Model& m, RuntimeOptions o) : model(m), c(m.config), opt(o) {}

  void gemm(const void* W, const void* xin, float* y, int T, int in, int out, float beta) {
    const float alpha = 1.0f;
    // Row-major W[out][in] is column-major W^T (in x out): y^T (out x T) = W · x^T.
    KVS_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, &alpha, W, wtype, in, xin, wtype, in, &beta, y, CUDA_R_32F,
                            out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void worker();
  void deliver(const Job& j);
  void check_error() {
    std::lock_guard<std::mutex> lk(mu);
    if (!error.empty()) throw Error(error);
  }
};

Runtime::Runtime(const Model& model, RuntimeOptions opt) : impl_(std::make_unique<Impl>(model, opt)) {
  Impl& I = *impl_;
  const ModelConfig& c = I.c;
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    cudaGetLastError();
    throw Error("cuda runtime: no CUDA device");
  }
  if (opt.device < 0 || opt.device >= n_dev) throw Error("cuda runtime: device " + std::to_string(opt.device) + " does not exist");
  KVS_CUDA(cudaSetDevice(opt.device));
  cudaDeviceProp prop{};
  KVS_CUDA(cudaGetDeviceProperties(&prop, opt.device));
  I.device_name = prop.name;
  if (c.head_dim % 2 != 0 || !decode_supported(c.head_dim, c.group()))
    throw Error("cuda runtime: head_dim " + std::to_string(c.head_dim) + " with GQA group " + std::to_string(c.group()) +
                " is not supported (head_dim 8..256, a power of two; group 1, 2, 4 or 8)");
  KVS_CUDA(cudaStreamCreateWithFlags(&I.compute, cudaStreamNonBlocking));
  KVS_CUDA(cudaStreamCreateWithFlags(&I.copy, cudaStreamNonBlocking));
  KVS_CUBLAS(cublasCreate(&I.blas));
  KVS_CUBLAS(cublasSetStream(I.blas, I.compute));
  I.wtype = opt.weights == HalfType::F16 ? CUDA_R_16F : CUDA_R_16BF;

  const Weights& w = model.weights;
  for (const LayerWeights& lw : w.layers) {
    LayerDev d;
    d.attn_norm = upload_f32(lw.attn_norm);
    d.ffn_norm = upload_f32(lw.ffn_norm);
    d.wq = upload_half(lw.wq, opt.weights);
    d.wk = upload_half(lw.wk, opt.weights);
    d.wv = upload_half(lw.wv, opt.weights);
    d.wo = upload_half(lw.wo, opt.weights);
    d.w_gate = upload_half(lw.w_gate, opt.weights);
    d.w_up = upload_half(lw.w_up, opt.weights);
    d.w_down = upload_half(lw.w_down, opt.weights);
    I.layers.push_back(d);
  }
  I.embed = upload_f32(w.tok_embedding);
  I.final_norm = upload_f32(w.final_norm);
  I.classifier = upload_half(w.classifier(), opt.weights);

  const int max_tokens = opt.max_tokens > 0 ? opt.max_tokens : c.max_seq_len;
  // The same fp32 tables as the CPU runtime (angles in double).
  const int half = c.head_dim / 2;
  std::vector<float> cs(static_cast<size_t>(max_tokens) * half), sn(cs.size());
  for (int p = 0; p < max_tokens; ++p)
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(c.rope_theta), -2.0 * i / c.head_dim);
      cs[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(p * freq));
      sn[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(p * freq));
    }
  I.rope_cos = upload_f32(cs);
  I.rope_sin = upload_f32(sn);
  I.kv = std::make_unique<KVCache>(c.n_layers, c.n_kv_heads, c.head_dim, opt.page_size, max_tokens, I.compute);
  I.scratch.reserve(decode_scratch_floats(1, c.n_heads, c.head_dim));
  KVS_CUDA(cudaEventCreateWithFlags(&I.arena_ready, cudaEventDisableTiming));
  for (auto& e : I.set_copied) KVS_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync));
  KVS_CUDA(cudaDeviceSynchronize());
  I.thread = std::thread([&I] { I.worker(); });
}

Runtime::~Runtime() {
  Impl& I = *impl_;
  {
    std::lock_guard<std::mutex> lk(I.mu);
    I.stop = true;
    I.queue.clear();
  }
  I.cv.notify_all();
  if (I.thread.joinable()) I.thread.join();
  cudaDeviceSynchronize();
  I.kv.reset();
  for (auto& d : I.layers)
    for (void* p : {static_cast<void*>(d.attn_norm), static_cast<void*>(d.ffn_norm), d.wq, d.wk, d.wv, d.wo, d.w_gate, d.w_up, d.w_down})
      cudaFree(p);
  for (void* p : {static_cast<void*>(I.embed), static_cast<void*>(I.final_norm), I.classifier, static_cast<void*>(I.rope_cos),
                  static_cast<void*>(I.rope_sin)})
    cudaFree(p);
  if (I.arena_ready) cudaEventDestroy(I.arena_ready);
  for (auto e : I.set_copied) cudaEventDestroy(e);
  if (I.blas) cublasDestroy(I.blas);
  if (I.compute) cudaStreamDestroy(I.compute);
  if (I.copy) cudaStreamDestroy(I.copy);
}

int32_t Runtime::pos() const { return impl_->pos; }
KVCache& Runtime::kv() { return *impl_->kv; }
const Model& Runtime::model() const { return impl_->model; }
const std::string& Runtime::device_name() const { return impl_->device_name; }
double Runtime::emit_wait_seconds() const { return impl_->wait_s; }

void Runtime::reset() {
  drain();
  impl_->kv->clear();
  impl_->pos = 0;
}

void Runtime::set_observer(cpu::AttentionObserver* o, PrefillReport report) {
  drain();
  impl_->observer = o;
  impl_->report = std::move(report);
}

void Runtime::post(std::function<void()> fn) {
  Impl& I = *impl_;
  if (!I.observer) {
    fn();
    return;
  }
  I.check_error();
  Job j;
  j.fn = std::move(fn);
  {
    std::lock_guard<std::mutex> lk(I.mu);
    I.queue.push_back(std::move(j));
  }
  I.cv.notify_all();
}

void Runtime::drain() {
  Impl& I = *impl_;
  std::unique_lock<std::mutex> lk(I.mu);
  I.cv.wait(lk, [&] { return I.queue.empty() && !I.working; });
  if (!I.error.empty()) {
    const std::string e = I.error;
    I.error.clear();  // reported once; the runtime stays usable
    throw Error(e);
  }
}

void Runtime::Impl::worker() {
  cudaSetDevice(opt.device);  // the runtime API's current device is per thread
  for (;;) {
    Job j;
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return !queue.empty() || stop; });
      // On destruction pending work is dropped: the observer may already be gone.
      if (stop) return;
      j = std::move(queue.front());
      queue.pop_front();
      working = true;
    }
    bool failed;
    {
      std::lock_guard<std::mutex> lk(mu);
      failed = !error.empty();
    }
    std::string err;
    try {
      if (j.set >= 0) {
        const cudaError_t e = cudaEventSynchronize(set_copied[j.set]);
        if (e != cudaSuccess) throw Error(std::string("cuda: emission copy: ") + cudaGetErrorString(e));
        if (!failed) deliver(j);
      } else if (!failed && j.fn) {
        j.fn();
      }
    } catch (const std::exception& e) {
      err = e.what();
    }
    {
      std::lock_guard<std::mutex> lk(mu);
      if (!err.empty() && error.empty()) error = err;
      if (j.set >= 0) set_busy[j.set] = false;
      working = false;
    }
    cv.notify_all();
  }
}

void Runtime::Impl::deliver(const Job& j) {
  const int H = c.n_heads, hd = c.head_dim, kvd = c.kv_dim(), group = c.group(), n_kv = c.n_kv_heads;
  const float* base = reinterpret_cast<const float*>(sets[j.set].p);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerSlice& s = j.slices[l];
    const float* probs = base + s.probs;
    const float* lse = base + s.lse;
    const float* qrows = base + s.q;
    const float* krows = base + s.k;
    const float* vrows = base + s.v;
    const int rows0 = j.T - j.rows;
    if (j.summed) {
      const float* cs = base + s.colsum;
      colsum_d.resize(j.T);
      for (int h = 0; h < H; ++h) {
        for (int i = 0; i < j.T; ++i) colsum_d[i] = cs[static_cast<size_t>(h) * j.n_max + i];
        report.add_colsum(l, h, colsum_d);
      }
    }
    for (int t = 0; t < j.T; ++t) {
      const bool full = t >= rows0;
      for (int h = 0; h < H; ++h) {
        const int kvh = h / group;
        if (!full && !(report.records_for_kv && h % group == 0)) continue;
        const std::vector<int32_t>& sp = j.slot_pos[static_cast<size_t>(l) * n_kv + kvh];
        const size_t n = sp.size();
        cpu::AttentionRecord r;
        r.layer = l;
        r.q_head = h;
        r.kv_head = kvh;
        r.query_pos = j.pos0 + t;
        r.slot_pos = {sp.data(), n};
        r.k = krows + static_cast<size_t>(t) * kvd + static_cast<size_t>(kvh) * hd;
        r.v = vrows + static_cast<size_t>(t) * kvd + static_cast<size_t>(kvh) * hd;
        if (full) {
          const size_t row = static_cast<size_t>(t - rows0) * H + h;
          r.probs = {probs + row * j.n_max, n};
          r.lse = lse[row];
          r.q = qrows + row * hd;
        } else {
          if (zeros.size() < n) zeros.assign(n, 0.0f);
          r.probs = {zeros.data(), n};
          r.lse = 0;
          r.q = nullptr;
        }
        observer->on_attention(r);
      }
    }
  }
}

std::span<const float> Runtime::forward(std::span<const int32_t> tokens, bool all_logits) {
  Impl& I = *impl_;
  const ModelConfig& c = I.c;
  const int T = static_cast<int>(tokens.size());
  if (T == 0) throw Error("forward: no tokens");
  KVCache& kv = *I.kv;
  if (I.pos + T > kv.max_tokens())
    throw Error("forward: positions " + std::to_string(I.pos) + ".." + std::to_string(I.pos + T - 1) + " exceed the context of " +
                std::to_string(kv.max_tokens()) + " tokens");
  for (int32_t tok : tokens)
    if (tok < 0 || tok >= c.vocab_size) throw Error("forward: token id " + std::to_string(tok) + " outside the vocabulary");
  I.check_error();
  const int d = c.dim, hd = c.head_dim, H = c.n_heads, qd = c.q_dim(), kvd = c.kv_dim(), hid = c.hidden_dim, V = c.vocab_size;
  const size_t Ts = T;
  I.tokens.reserve(Ts);
  I.x.reserve(Ts * d);
  I.xb.reserve(Ts * std::max({d, qd, hid}));
  I.q.reserve(Ts * qd);
  I.k.reserve(Ts * kvd);
  I.v.reserve(Ts * kvd);
  I.att.reserve(Ts * qd);
  I.gate.reserve(Ts * hid);
  I.up.reserve(Ts * hid);
  I.lse.reserve(Ts * H);
  const int first = all_logits ? 0 : T - 1, n_out = T - first;
  I.logits.reserve(static_cast<size_t>(n_out) * V);
  I.h_logits.reserve(sizeof(float) * n_out * V);
  cudaStream_t s = I.compute;
  KVS_CUDA(cudaMemcpyAsync(I.tokens.p, tokens.data(), sizeof(int32_t) * T, cudaMemcpyHostToDevice, s));
  launch_embed(I.embed, I.tokens.p, I.x.p, T, d, s);

  // Slots for this call's tokens in every layer, one upload of rows, tables and counts
  // (before the emission set-up: a full stream throws here, with nothing half-done).
  const bool fresh_cache = I.pos == 0 && kv.n_slots(0, 0) == 0;
  kv.reserve_all(I.pos, T);
  const PagedKV view = kv.view();

  // ---- emission set-up: a free pinned set, the layout of this step's records ----
  const bool emit = I.observer != nullptr;
  Job job;
  if (emit) {
    const int n_kv = c.n_kv_heads;
    int n_after = 0;  // slots of the longest stream, this call's tokens included
    for (int l = 0; l < c.n_layers; ++l)
      for (int h = 0; h < n_kv; ++h) n_after = std::max(n_after, kv.n_slots(l, h));
    job.T = T;
    job.pos0 = I.pos;
    job.n_max = n_after;
    job.summed = T > 1 && I.report.full_rows >= 0 && I.report.add_colsum && fresh_cache;
    job.rows = T == 1 ? 1 : (job.summed ? std::min(I.report.full_rows, T) : T);
    size_t off = 0;
    job.slices.resize(c.n_layers);
    for (auto& sl : job.slices) {
      sl.probs = off, off += static_cast<size_t>(job.rows) * H * n_after;
      sl.lse = off, off += static_cast<size_t>(job.rows) * H;
      sl.colsum = off, off += job.summed ? static_cast<size_t>(H) * n_after : 0;
      sl.q = off, off += static_cast<size_t>(job.rows) * qd;
      sl.k = off, off += Ts * kvd;
      sl.v = off, off += Ts * kvd;
    }
    const int set = I.next_set;
    I.next_set ^= 1;
    {
      const auto t0 = std::chrono::steady_clock::now();
      std::unique_lock<std::mutex> lk(I.mu);
      I.cv.wait(lk, [&] { return !I.set_busy[set] || !I.error.empty(); });
      I.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!I.error.empty()) throw Error(I.error);
      I.set_busy[set] = true;
    }
    job.set = set;
    try {
      I.sets[set].reserve(off * sizeof(float));
      I.arena[set].reserve(off);
    } catch (...) {
      std::lock_guard<std::mutex> lk(I.mu);
      I.set_busy[set] = false;
      throw;
    }
    job.floats = off;
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* arena = emit ? I.arena[job.set].p : nullptr;
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerDev& w = I.layers[l];
    launch_rmsnorm(I.x.p, w.attn_norm, I.xb.p, I.opt.weights, T, d, c.norm_eps, s);
    I.gemm(w.wq, I.xb.p, I.q.p, T, d, qd, 0.0f);
    I.gemm(w.wk, I.xb.p, I.k.p, T, d, kvd, 0.0f);
    I.gemm(w.wv, I.xb.p, I.v.p, T, d, kvd, 0.0f);
    const bool interleaved = c.rope == RopeLayout::Interleaved;
    launch_rope(I.q.p, I.rope_cos, I.rope_sin, T, H, hd, I.pos, interleaved, s);
    launch_rope(I.k.p, I.rope_cos, I.rope_sin, T, c.n_kv_heads, hd, I.pos, interleaved, s);
    kv.append_reserved(l, I.pos, T, I.k.p, I.v.p);
    const LayerSlice* sl = emit ? &job.slices[l] : nullptr;
    float* lse_out = emit ? arena + sl->lse : I.lse.p;
    if (T == 1) {
      DecodeArgs a;
      a.kv = view;
      a.q = I.q.p;
      a.out = I.att.p;
      a.lse = lse_out;
      a.batch = 1;
      a.n_heads = H;
      a.n_kv_heads = c.n_kv_heads;
      a.stream0 = l * c.n_kv_heads;
      a.batch_stream_stride = 0;
      int mp = 0;
      for (int h = 0; h < c.n_kv_heads; ++h) mp = std::max(mp, kv.n_pages(l, h));
      a.max_pages_used = mp;
      a.qpos = I.pos;
      a.scale = scale;
      if (emit) {
        a.emit.probs = arena + sl->probs;
        a.emit.stride = job.n_max;
      }
      a.scratch = I.scratch.p;
      a.scratch_floats = static_cast<int64_t>(I.scratch.cap);
      launch_decode_attention(a, s);
    } else {
      PrefillArgs a;
      a.kv = view;
      a.q = I.q.p;
      a.out = I.att.p;
      a.lse = I.lse.p;
      a.T = T;
      a.n_heads = H;
      a.n_kv_heads = c.n_kv_heads;
      a.stream0 = l * c.n_kv_heads;
      a.pos0 = I.pos;
      a.scale = scale;
      if (emit) {
        a.emit.probs = arena + sl->probs;
        a.emit.stride = job.n_max;
        a.emit.rows = job.rows;
        a.emit.colsum = job.summed ? arena + sl->colsum : nullptr;
      }
      launch_prefill_attention(a, s);
    }
    if (emit) {
      // Q of the stored rows, K/V of every token (and, for a prefill, the stored rows'
      // lse) into the arena: the activations are reused by the next layer.
      CopySeg seg[4];
      seg[0] = {I.q.p + static_cast<size_t>(T - job.rows) * qd, arena + sl->q, static_cast<int64_t>(job.rows) * qd};
      seg[1] = {I.k.p, arena + sl->k, static_cast<int64_t>(Ts * kvd)};
      seg[2] = {I.v.p, arena + sl->v, static_cast<int64_t>(Ts * kvd)};
      seg[3] = {I.lse.p + static_cast<size_t>(T - job.rows) * H, arena + sl->lse, static_cast<int64_t>(job.rows) * H};
      launch_copy_segments(seg, T == 1 ? 3 : 4, s);
    }
    launch_to_half(I.att.p, I.xb.p, I.opt.weights, Ts * qd, s);
    I.gemm(w.wo, I.xb.p, I.x.p, T, qd, d, 1.0f);  // x += Wo · att (beta = 1: the residual)
    launch_rmsnorm(I.x.p, w.ffn_norm, I.xb.p, I.opt.weights, T, d, c.norm_eps, s);
    I.gemm(w.w_gate, I.xb.p, I.gate.p, T, d, hid, 0.0f);
    I.gemm(w.w_up, I.xb.p, I.up.p, T, d, hid, 0.0f);
    launch_swiglu(I.gate.p, I.up.p, I.xb.p, I.opt.weights, Ts * hid, s);
    I.gemm(w.w_down, I.xb.p, I.x.p, T, hid, d, 1.0f);
  }
  if (emit) {
    // One copy of the whole arena on the copy stream; it overlaps the classifier, the
    // host's sampling and the next step.
    KVS_CUDA(cudaEventRecord(I.arena_ready, s));
    KVS_CUDA(cudaStreamWaitEvent(I.copy, I.arena_ready, 0));
    KVS_CUDA(cudaMemcpyAsync(I.sets[job.set].p, arena, sizeof(float) * job.floats, cudaMemcpyDeviceToHost, I.copy));
    KVS_CUDA(cudaEventRecord(I.set_copied[job.set], I.copy));
    job.slot_pos.resize(static_cast<size_t>(c.n_layers) * c.n_kv_heads);
    for (int l = 0; l < c.n_layers; ++l)
      for (int h = 0; h < c.n_kv_heads; ++h) job.slot_pos[static_cast<size_t>(l) * c.n_kv_heads + h] = kv.slot_positions(l, h);
    {
      std::lock_guard<std::mutex> lk(I.mu);
      I.queue.push_back(std::move(job));
    }
    I.cv.notify_all();
  }
  launch_rmsnorm(I.x.p + static_cast<size_t>(first) * d, I.final_norm, I.xb.p, I.opt.weights, n_out, d, c.norm_eps, s);
  I.gemm(I.classifier, I.xb.p, I.logits.p, n_out, d, V, 0.0f);
  float* hl = reinterpret_cast<float*>(I.h_logits.p);
  KVS_CUDA(cudaMemcpyAsync(hl, I.logits.p, sizeof(float) * n_out * V, cudaMemcpyDeviceToHost, s));
  KVS_CUDA(cudaStreamSynchronize(s));
  I.pos += T;
  return {hl, static_cast<size_t>(n_out) * V};
}

}  // namespace kvscope::cuda
