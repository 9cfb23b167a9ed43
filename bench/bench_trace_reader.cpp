// Trace reader throughput, measured side by side with memcpy in one run.
//   usage: bench_trace_reader TRACE.kvt [reps=7]
// For every (chunk, layer) frame: full read_frame (CRC, zstd, un-shuffle, parse) vs
// ZSTD_decompress alone vs memcpy of the same number of decoded bytes. Prints medians.
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "traces/reader.h"

using namespace kvscope;
using clk = std::chrono::steady_clock;

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TRACE.kvt [reps]\n", argv[0]);
    return 2;
  }
  const int reps = argc > 2 ? std::atoi(argv[2]) : 7;
  trace::TraceReader r(argv[1]);
  const uint32_t L = r.info().n_layers;
  uint64_t raw_total = 0, z_total = 0, max_raw = 0;
  for (const auto& c : r.chunks())
    for (const auto& f : c.frames) {
      raw_total += f.raw_size;
      z_total += f.compressed_size;
      max_raw = std::max<uint64_t>(max_raw, f.raw_size);
    }
  std::vector<uint8_t> src(max_raw, 1), dst(max_raw), zbuf(max_raw);
  trace::LayerFrame frame;
  std::vector<double> t_read, t_zstd, t_copy;
  volatile uint64_t sink = 0;
  for (int rep = 0; rep < reps; ++rep) {
    auto t0 = clk::now();
    for (uint32_t ci = 0; ci < r.chunks().size(); ++ci)
      for (uint32_t l = 0; l < L; ++l) {
        r.read_frame(ci, l, frame);
        sink = sink + frame.steps.size();
      }
    auto t1 = clk::now();
    const uint8_t* base = nullptr;
    {
      // zstd alone, on the same frames.
      MappedFile mf(argv[1]);
      base = mf.data();
      auto z0 = clk::now();
      for (const auto& c : r.chunks()) {
        uint64_t off = c.frames_offset;
        for (const auto& f : c.frames) {
          ZSTD_decompress(zbuf.data(), zbuf.size(), base + off, f.compressed_size);
          off += f.compressed_size;
        }
      }
      t_zstd.push_back(std::chrono::duration<double>(clk::now() - z0).count());
    }
    auto c0 = clk::now();
    for (const auto& c : r.chunks())
      for (const auto& f : c.frames) {
        std::memcpy(dst.data(), src.data(), f.raw_size);
        sink = sink + dst[f.raw_size / 2];
      }
    auto c1 = clk::now();
    t_read.push_back(std::chrono::duration<double>(t1 - t0).count());
    t_copy.push_back(std::chrono::duration<double>(c1 - c0).count());
  }
  const double tr = median(t_read), tz = median(t_zstd), tc = median(t_copy);
  std::printf("trace            %s (%u steps, %zu chunks x %u layers)\n", argv[1], r.n_steps(), r.chunks().size(), L);
  std::printf("bytes            %llu compressed -> %llu decoded (ratio %.2f)\n", (unsigned long long)z_total,
              (unsigned long long)raw_total, double(raw_total) / z_total);
  std::printf("reader           %8.1f MB/s decoded  (median of %d)\n", raw_total / tr / 1e6, reps);
  std::printf("zstd alone       %8.1f MB/s decoded  (zstd share of the reader: %.0f %%)\n", raw_total / tz / 1e6, 100.0 * tz / tr);
  std::printf("memcpy           %8.1f MB/s of the same bytes\n", raw_total / tc / 1e6);
  std::printf("reader / memcpy  %8.3f\n", tc / tr);
  return sink == 42 ? 1 : 0;
}
