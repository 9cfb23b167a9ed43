#include "traces/writer.h"

#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>

#include "kernels/io/error.h"
#include "kernels/io/halfs.h"
#include "kvscope_version.h"
#include "traces/crc32c.h"

namespace kvscope::trace {

using nlohmann::json;

json TraceWriter::make_header(const Model& m, const std::vector<int32_t>& prompt_ids, const CaptureSettings& s,
                              const json& extra_capture) {
  const ModelConfig& c = m.config;
  std::vector<int> kv_of_q(c.n_heads);
  for (int h = 0; h < c.n_heads; ++h) kv_of_q[h] = h / c.group();
  json capture = {{"mode", s.mode == Mode::Dense ? "dense" : "topk"},
                  {"topk", s.mode == Mode::TopK ? s.topk : 0},
                  {"with_qkv", s.with_qkv},
                  {"prefill_window", s.prefill_window},
                  {"prob_dtype", "f16"},
                  {"qkv_dtype", "f16"},
                  {"steps_per_chunk", s.steps_per_chunk},
                  {"zstd_level", s.zstd_level}};
  for (auto& [k, v] : extra_capture.items()) capture[k] = v;
  return {{"format", "kvscope-trace"},
          {"version", kVersion},
          {"created_by", std::string("kvscope ") + KVSCOPE_VERSION},
          {"synthetic", false},
          {"model", config_json(c)},
          {"tokenizer", {{"identity", m.tokenizer.identity()}, {"bos_id", m.tokenizer.bos()}, {"eos_id", m.tokenizer.eos()}}},
          {"gqa", {{"group", c.group()}, {"kv_head_of_q_head", kv_of_q}}},
          {"prompt_ids", prompt_ids},
          {"capture", capture}};
}

TraceWriter::TraceWriter(const std::string& path, const json& header, const ModelConfig& cfg, CaptureSettings s)
    : path_(path), cfg_(cfg), s_(s) {
  if (s_.steps_per_chunk <= 0) throw Error("trace: steps_per_chunk must be positive");
  if (s_.mode == Mode::TopK && s_.topk <= 0) throw Error("trace: --topk must be positive");
  if (s_.prefill_window < 0 || s_.prefill_window > (1 << 24)) throw Error("trace: prefill_window must be in 0..2^24");
  if (s_.topk > (1 << 24)) throw Error("trace: topk must be at most 2^24");
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path, std::string("cannot create: ") + std::strerror(errno));
  const std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  std::vector<uint8_t> h;
  h.insert(h.end(), kFileMagic, kFileMagic + 8);
  put<uint32_t>(h, kVersion);
  put<uint32_t>(h, 0);
  put<uint64_t>(h, text.size());
  put<uint32_t>(h, crc32c(text.data(), text.size()));
  put<uint32_t>(h, 0);
  h.insert(h.end(), text.begin(), text.end());
  write_all(h.data(), h.size());
  offset_ = h.size();
  cur_.resize(cfg_.n_layers);
  chunk_.resize(cfg_.n_layers);
  thread_ = std::thread([this] { worker(); });
}

TraceWriter::~TraceWriter() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
}

void TraceWriter::write_all(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd_, b, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(path_, std::string("write failed: ") + std::strerror(errno));
    }
    b += w;
    n -= static_cast<size_t>(w);
  }
}

void TraceWriter::begin_step(uint32_t step, StepKind kind, uint32_t n_queries, uint32_t first_pos, int32_t token) {
  if (in_step_) throw Error("trace: begin_step without end_step");
  if (step != steps_done_) throw Error("trace: steps must be consecutive from 0");
  in_step_ = true;
  step_ = step;
  kind_ = kind;
  n_queries_ = n_queries;
  first_pos_ = first_pos;
  token_ = token;
  n_rows_ = kind == StepKind::Prefill ? std::min<uint32_t>(s_.prefill_window, n_queries) : 1;
  first_row_pos_ = first_pos + n_queries - n_rows_;
  for (auto& sl : cur_) {
    if (kind == StepKind::Prefill) sl.colsum.assign(static_cast<size_t>(cfg_.n_heads) * n_queries, 0.0);
    else sl.colsum.clear();
  }
}

static void append_halves(std::vector<uint16_t>& out, const float* src, size_t n) {
  const size_t b = out.size();
  out.resize(b + n);
  floats_to_halves(src, out.data() + b, n);
}

void TraceWriter::on_attention(const cpu::AttentionRecord& r) {
  if (!in_step_) throw Error("trace: attention reported outside a step");
  if (r.layer < 0 || r.layer >= cfg_.n_layers || r.q_head < 0 || r.q_head >= cfg_.n_heads)
    throw Error("trace: attention record for layer " + std::to_string(r.layer) + ", head " + std::to_string(r.q_head) +
                " outside the model");
  StepLayer& sl = cur_[r.layer];
  const uint32_t q = static_cast<uint32_t>(r.query_pos);
  const uint32_t n = q + 1;  // keys 0..q
  if (r.probs.size() < n || r.slot_pos.size() < n)
    throw Error("trace: capture needs the full KV cache (fewer slots than positions)");
  for (uint32_t j = 0; j < n; ++j)
    if (r.slot_pos[j] != static_cast<int32_t>(j))
      throw Error("trace: capture needs the full KV cache (slot " + std::to_string(j) + " holds position " +
                  std::to_string(r.slot_pos[j]) + ")");
  const float* p = r.probs.data();
  if (kind_ == StepKind::Prefill) {
    double* cs = sl.colsum.data() + static_cast<size_t>(r.q_head) * n_queries_;
    for (uint32_t j = 0; j < n; ++j) cs[j] += p[j];
  }
  if (q >= first_row_pos_) {
    put<float>(sl.rows_meta, r.lse);
    if (s_.mode == Mode::Dense) {
      const size_t base = sl.rows_halves.size();
      sl.rows_halves.resize(base + n);
      floats_to_halves(p, sl.rows_halves.data() + base, n);
    } else {
      // The k largest probabilities, ties by lower position: find the k-th largest value
      // t, keep every p > t and the first (k - #greater) entries equal to t, in position
      // order (so keys come out ascending).
      const uint32_t k = std::min<uint32_t>(static_cast<uint32_t>(s_.topk), n);
      sel_.assign(p, p + n);
      std::nth_element(sel_.begin(), sel_.begin() + (k - 1), sel_.end(), std::greater<float>());
      const float t = sel_[k - 1];
      uint32_t greater = 0;
      for (uint32_t j = 0; j < n; ++j) greater += p[j] > t;
      uint32_t equal_left = k - greater;
      double kept = 0;
      const size_t base = sl.rows_index.size();
      for (uint32_t j = 0; j < n; ++j) {
        const bool keep = p[j] > t || (p[j] == t && equal_left > 0 && (--equal_left, true));
        if (!keep) continue;
        sl.rows_index.push_back(j);
        sl.rows_halves.push_back(f32_to_f16(p[j]));
        kept += p[j];
      }
      put<float>(sl.rows_meta, static_cast<float>(1.0 - kept));
      put<uint32_t>(sl.rows_meta, static_cast<uint32_t>(sl.rows_index.size() - base));
    }
    if (s_.with_qkv) append_halves(sl.q, r.q, cfg_.head_dim);
  }
  if (s_.with_qkv && r.q_head % cfg_.group() == 0) {
    append_halves(sl.k, r.k, cfg_.head_dim);
    append_halves(sl.v, r.v, cfg_.head_dim);
  }
}

void TraceWriter::add_prefill_colsum(int layer, int q_head, std::span<const double> sums) {
  if (!in_step_ || kind_ != StepKind::Prefill) throw Error("trace: add_prefill_colsum outside a prefill step");
  if (layer < 0 || layer >= cfg_.n_layers || q_head < 0 || q_head >= cfg_.n_heads)
    throw Error("trace: add_prefill_colsum for layer " + std::to_string(layer) + ", head " + std::to_string(q_head) +
                " outside the model");
  if (sums.size() != n_queries_) throw Error("trace: add_prefill_colsum needs one sum per prefill key");
  double* cs = cur_[layer].colsum.data() + static_cast<size_t>(q_head) * n_queries_;
  for (uint32_t j = 0; j < n_queries_; ++j) cs[j] += sums[j];
}

void TraceWriter::end_step() {
  if (!in_step_) throw Error("trace: end_step without begin_step");
  for (int l = 0; l < cfg_.n_layers; ++l) {
    StepLayer& sl = cur_[l];
    LayerBuf& lb = chunk_[l];
    put<uint32_t>(lb.meta, step_);
    put<uint32_t>(lb.meta, static_cast<uint32_t>(kind_));
    put<uint32_t>(lb.meta, n_queries_);
    put<uint32_t>(lb.meta, first_pos_);
    put<uint32_t>(lb.meta, n_rows_);
    put<uint32_t>(lb.meta, static_cast<uint32_t>(token_));
    if (kind_ == StepKind::Prefill) {
      for (double x : sl.colsum) put<float>(lb.meta, static_cast<float>(x));
    }
    const size_t expect_rows_meta = static_cast<size_t>(n_rows_) * cfg_.n_heads * (s_.mode == Mode::Dense ? 4 : 12);
    if (sl.rows_meta.size() != expect_rows_meta)
      throw Error("trace: step " + std::to_string(step_) + " layer " + std::to_string(l) + ": expected " +
                  std::to_string(n_rows_ * cfg_.n_heads) + " attention rows, got a different count");
    lb.meta.insert(lb.meta.end(), sl.rows_meta.begin(), sl.rows_meta.end());
    for (auto* src : {&sl.rows_halves, &sl.q, &sl.k, &sl.v}) lb.halves.insert(lb.halves.end(), src->begin(), src->end());
    lb.index.insert(lb.index.end(), sl.rows_index.begin(), sl.rows_index.end());
    sl.rows_meta.clear();
    sl.rows_halves.clear();
    sl.q.clear();
    sl.k.clear();
    sl.v.clear();
    sl.rows_index.clear();
  }
  in_step_ = false;
  if (chunk_steps_ == 0) chunk_first_step_ = step_;
  ++chunk_steps_;
  ++steps_done_;
  if (chunk_steps_ == static_cast<uint32_t>(s_.steps_per_chunk)) submit_chunk();
}

void TraceWriter::submit_chunk() {
  if (chunk_steps_ == 0) return;
  Job job{chunk_index_++, chunk_first_step_, chunk_steps_, std::move(chunk_)};
  chunk_.assign(cfg_.n_layers, LayerBuf{});
  chunk_steps_ = 0;
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return queue_.size() < 2 || !worker_error_.empty(); });  // double buffering
  if (!worker_error_.empty()) throw Error(worker_error_);
  queue_.push_back(std::move(job));
  cv_.notify_all();
}

std::vector<uint8_t> TraceWriter::encode_chunk(const Job& job) const {
  std::vector<FrameEntry> table;
  std::vector<std::vector<uint8_t>> frames;
  std::vector<uint8_t> raw;
  for (const LayerBuf& lb : job.layers) {
    raw.clear();
    put<uint64_t>(raw, lb.meta.size());
    put<uint64_t>(raw, lb.halves.size());
    put<uint64_t>(raw, lb.index.size());
    raw.insert(raw.end(), lb.meta.begin(), lb.meta.end());
    // f16 values byte-planar: low bytes, then high bytes.
    const size_t nh = lb.halves.size(), b = raw.size();
    raw.resize(b + 2 * nh);
    for (size_t i = 0; i < nh; ++i) {
      raw[b + i] = static_cast<uint8_t>(lb.halves[i] & 0xff);
      raw[b + nh + i] = static_cast<uint8_t>(lb.halves[i] >> 8);
    }
    // Indices as wrapping differences from the previous value (the first from 0).
    uint32_t prev = 0;
    for (uint32_t x : lb.index) {
      put<uint32_t>(raw, x - prev);
      prev = x;
    }
    std::vector<uint8_t> z(ZSTD_compressBound(raw.size()));
    const size_t zn = ZSTD_compress(z.data(), z.size(), raw.data(), raw.size(), s_.zstd_level);
    if (ZSTD_isError(zn)) throw Error(path_ + ": zstd: " + ZSTD_getErrorName(zn));
    z.resize(zn);
    table.push_back({zn, raw.size(), crc32c(z.data(), zn)});
    frames.push_back(std::move(z));
  }
  std::vector<uint8_t> tab;
  for (const FrameEntry& e : table) {
    put<uint64_t>(tab, e.compressed_size);
    put<uint64_t>(tab, e.raw_size);
    put<uint32_t>(tab, e.crc);
    put<uint32_t>(tab, 0);
  }
  uint64_t frames_bytes = 0;
  for (auto& f : frames) frames_bytes += f.size();
  std::vector<uint8_t> out;
  out.reserve(kChunkHeaderBytes + tab.size() + frames_bytes);
  out.insert(out.end(), kChunkMagic, kChunkMagic + 4);
  put<uint32_t>(out, job.chunk_index);
  put<uint32_t>(out, job.first_step);
  put<uint32_t>(out, job.n_steps);
  put<uint32_t>(out, static_cast<uint32_t>(job.layers.size()));
  put<uint32_t>(out, 0);
  put<uint64_t>(out, frames_bytes);
  put<uint64_t>(out, 0);
  put<uint32_t>(out, crc32c(tab.data(), tab.size()));
  put<uint32_t>(out, crc32c(out.data(), out.size()));
  out.insert(out.end(), tab.begin(), tab.end());
  for (auto& f : frames) out.insert(out.end(), f.begin(), f.end());
  return out;
}

void TraceWriter::worker() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return !queue_.empty() || stop_; });
      if (queue_.empty()) return;
      job = std::move(queue_.front());
    }
    try {
      const std::vector<uint8_t> bytes = encode_chunk(job);
      write_all(bytes.data(), bytes.size());
      std::lock_guard<std::mutex> lk(mu_);
      index_.push_back({offset_, job.first_step, job.n_steps, bytes.size()});
      offset_ += bytes.size();
      queue_.pop_front();
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(mu_);
      worker_error_ = e.what();
      queue_.clear();
    }
    cv_.notify_all();
  }
}

void TraceWriter::finish() {
  if (finished_) return;
  if (in_step_) throw Error("trace: finish inside a step");
  submit_chunk();
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return queue_.empty(); });
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  if (!worker_error_.empty()) throw Error(worker_error_);
  std::vector<uint8_t> idx;
  idx.insert(idx.end(), kIndexMagic, kIndexMagic + 8);
  put<uint32_t>(idx, static_cast<uint32_t>(index_.size()));
  put<uint32_t>(idx, 0);
  for (const IndexEntry& e : index_) {
    put<uint64_t>(idx, e.chunk_offset);
    put<uint32_t>(idx, e.first_step);
    put<uint32_t>(idx, e.n_steps);
    put<uint64_t>(idx, e.chunk_bytes);
  }
  std::vector<uint8_t> tr;
  tr.insert(tr.end(), kEndMagic, kEndMagic + 8);
  put<uint64_t>(tr, offset_);
  put<uint64_t>(tr, idx.size());
  put<uint32_t>(tr, crc32c(idx.data(), idx.size()));
  put<uint32_t>(tr, steps_done_);
  write_all(idx.data(), idx.size());
  write_all(tr.data(), tr.size());
  offset_ += idx.size() + tr.size();
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail(path_, std::string("close failed: ") + std::strerror(errno));
  }
  fd_ = -1;
  finished_ = true;
}

uint64_t TraceWriter::bytes_written() const {
  std::lock_guard<std::mutex> lk(mu_);
  return offset_;
}

}  // namespace kvscope::trace
