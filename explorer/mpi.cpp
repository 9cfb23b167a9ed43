// MPI dispatcher and worker loop for `kvscope explore` (explorer/mpi.h).
#include "explorer/mpi.h"

#include <cstdlib>
#include <string>

#include "kernels/io/error.h"

#ifdef KVSCOPE_HAVE_MPI
#include <mpi.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>
#include <boost/mpi/exception.hpp>
#include <boost/mpi/request.hpp>
#include <boost/serialization/string.hpp>
#include <chrono>
#include <cstdio>
#include <deque>
#include <thread>
#include <unordered_map>
#include <vector>
#endif

namespace kvscope::explore {

bool mpi_launched() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    const char* v = std::getenv(var);
    if (v && std::atoi(v) > 1) return true;
  }
  return false;
}

#ifndef KVSCOPE_HAVE_MPI

bool mpi_available() { return false; }
struct MpiSession::Impl {};
MpiSession::MpiSession() {
  throw Error("explore: this kvscope was built without MPI (Boost.MPI not found at configure time); run it without mpirun");
}
MpiSession::~MpiSession() = default;
int MpiSession::rank() const { return 0; }
int MpiSession::size() const { return 1; }
void MpiSession::broadcast_spec(const std::string&, const std::string&) {}
bool MpiSession::receive_spec(std::string&, std::string&) { return false; }
bool MpiSession::serve(const Evaluator*, const std::string&) { return false; }
std::unique_ptr<Backend> MpiSession::backend(double) { return nullptr; }
void MpiSession::stop_workers() {}
bool MpiSession::lost_worker() const { return false; }

#else

namespace mpi = boost::mpi;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

enum Tag : int { kWork = 1, kResult = 2, kStop = 3, kFatal = 4 };

// A message is "<ticket>\n<json>".
std::string frame(uint64_t ticket, const std::string& body) { return std::to_string(ticket) + "\n" + body; }
uint64_t unframe(const std::string& msg, std::string& body) {
  const size_t nl = msg.find('\n');
  if (nl == std::string::npos) throw Error("explore (MPI): malformed message from a worker");
  body = msg.substr(nl + 1);
  return std::stoull(msg.substr(0, nl));
}

void nap() { std::this_thread::sleep_for(std::chrono::microseconds(200)); }

}  // namespace

bool mpi_available() { return true; }

struct MpiSession::Impl {
  mpi::environment env{false};  // no MPI_Abort when an error unwinds past it: it is reported, then finalized
  mpi::communicator world;
  uint64_t next_ticket = 1;
  std::vector<char> dead;  // by rank
  bool lost = false;
  int stop_flag = 0;  // the payload of kStop; outlives the isends that carry it
  std::vector<mpi::request> orphans;  // sends to ranks taken for dead
  Impl() {
    // Errors come back as exceptions (a send to a rank that died must not abort rank 0).
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    dead.assign(world.size(), 0);
  }
};

MpiSession::MpiSession() : impl_(std::make_unique<Impl>()) {}
MpiSession::~MpiSession() = default;
int MpiSession::rank() const { return impl_->world.rank(); }
int MpiSession::size() const { return impl_->world.size(); }
bool MpiSession::lost_worker() const { return impl_->lost; }

void MpiSession::broadcast_spec(const std::string& raw, const std::string& base_dir) {
  std::string msg = raw.empty() ? std::string() : base_dir + "\n" + raw;
  mpi::broadcast(impl_->world, msg, 0);
}

bool MpiSession::receive_spec(std::string& raw, std::string& base_dir) {
  std::string msg;
  mpi::broadcast(impl_->world, msg, 0);
  if (msg.empty()) return false;
  const size_t nl = msg.find('\n');
  base_dir = msg.substr(0, nl);
  raw = msg.substr(nl + 1);
  return true;
}

bool MpiSession::serve(const Evaluator* ev, const std::string& error) {
  mpi::communicator& w = impl_->world;
  if (!ev) w.send(0, kFatal, "rank " + std::to_string(w.rank()) + ": " + error);
  for (;;) {
    auto st = w.iprobe(0, mpi::any_tag);
    if (!st) {
      nap();
      continue;
    }
    if (st->tag() == kStop) {
      int lost = 0;
      w.recv(0, kStop, lost);
      return lost != 0;
    }
    std::string msg, body;
    w.recv(0, st->tag(), msg);
    if (st->tag() != kWork || !ev) continue;
    const uint64_t ticket = unframe(msg, body);
    const json m = ev->evaluate(json::parse(body));
    w.send(0, kResult, frame(ticket, m.dump()));
  }
}

namespace {

class MpiBackend final : public Backend {
 public:
  MpiBackend(MpiSession::Impl& s, double timeout_s) : s_(s), timeout_(timeout_s), sends_(s.world.size()) {}

  void evaluate(const std::vector<const json*>& todo, const std::function<void(size_t, json)>& deliver,
                const std::atomic<bool>* stop) override {
    const int n_ranks = s_.world.size();
    std::vector<std::deque<Out>> inflight(n_ranks);
    std::vector<Clock::time_point> heard(n_ranks, Clock::now());
    std::deque<size_t> pending;
    for (size_t k = 0; k < todo.size(); ++k) pending.push_back(k);
    std::vector<char> delivered(todo.size(), 0);
    size_t n_delivered = 0;
    std::unordered_map<uint64_t, std::pair<int, size_t>> ticket;  // this call's tickets -> (rank, k)

    while (n_delivered < todo.size()) {
      const bool stopping = stop && stop->load();
      // Hand out work: up to kDepth configurations per live worker, so a worker never waits.
      bool busy = false;
      for (int r = 1; r < n_ranks; ++r) {
        if (s_.dead[r]) continue;
        while (!stopping && !s_.dead[r] && inflight[r].size() < kDepth && !pending.empty()) {
          const size_t k = pending.front();
          pending.pop_front();
          if (delivered[k]) continue;
          if (inflight[r].empty()) heard[r] = Clock::now();
          const uint64_t t = s_.next_ticket++;
          inflight[r].push_back({t, k});
          ticket[t] = {r, k};
          try {  // never a blocking send: it would hang on a rank that died
            sends_[r].push_back(s_.world.isend(r, kWork, frame(t, todo[k]->dump())));
          } catch (const mpi::exception&) {  // the rank is gone (mpirun --enable-recovery)
            lose(r, inflight[r], pending, delivered, "unreachable");
          }
        }
        busy = busy || !inflight[r].empty();
      }
      if (!busy) {
        if (stopping) return;
        throw Error("explore (MPI): every worker rank is gone with " + std::to_string(todo.size() - n_delivered) +
                    " configurations left; the finished ones are in the database, run again to resume");
      }
      // Collect answers.
      bool got = false;
      while (auto st = s_.world.iprobe(mpi::any_source, mpi::any_tag)) {
        got = true;
        std::string msg, body;
        const int r = st->source();
        s_.world.recv(r, st->tag(), msg);
        if (st->tag() == kFatal) throw Error("explore (MPI): worker " + msg);
        if (st->tag() != kResult) continue;
        const auto it = ticket.find(unframe(msg, body));
        if (it == ticket.end()) continue;  // a late answer from an earlier batch
        const size_t k = it->second.second;
        auto& q = inflight[it->second.first];
        for (auto o = q.begin(); o != q.end(); ++o)
          if (o->ticket == it->first) {
            q.erase(o);
            break;
          }
        heard[r] = Clock::now();
        ticket.erase(it);
        if (delivered[k]) continue;  // also done by the rank it was handed to after a timeout
        delivered[k] = 1;
        ++n_delivered;
        deliver(k, json::parse(body));
      }
      for (auto& q : sends_) std::erase_if(q, [](mpi::request& rq) { return static_cast<bool>(rq.test()); });
      if (got) continue;
      // Silent workers with work out are taken for dead; their work goes back in front.
      const auto now = Clock::now();
      for (int r = 1; r < n_ranks; ++r) {
        if (s_.dead[r] || inflight[r].empty()) continue;
        if (std::chrono::duration<double>(now - heard[r]).count() <= timeout_) continue;
        lose(r, inflight[r], pending, delivered, "silent for " + std::to_string(static_cast<int>(timeout_)) + " s");
      }
      nap();
    }
  }

 private:
  struct Out {
    uint64_t ticket;
    size_t k;
  };
  // Takes rank r for dead: its undelivered in-flight configurations go back in front.
  void lose(int r, std::deque<Out>& inflight, std::deque<size_t>& pending, const std::vector<char>& delivered,
            const std::string& why) {
    s_.dead[r] = 1;
    s_.lost = true;
    // Its unfinished sends never complete: keep them alive, never wait on them.
    for (auto& rq : sends_[r]) s_.orphans.push_back(std::move(rq));
    sends_[r].clear();
    std::fprintf(stderr, "\nkvscope explore: MPI rank %d %s, taken for dead; its %zu configurations go to the others\n", r,
                 why.c_str(), inflight.size());
    for (auto o = inflight.rbegin(); o != inflight.rend(); ++o)
      if (!delivered[o->k]) pending.push_front(o->k);
    inflight.clear();
  }

  static constexpr size_t kDepth = 2;
  MpiSession::Impl& s_;
  double timeout_;
  std::vector<std::vector<mpi::request>> sends_;  // by rank: work sends not yet completed
};

}  // namespace

std::unique_ptr<Backend> MpiSession::backend(double timeout_s) { return std::make_unique<MpiBackend>(*impl_, timeout_s); }

void MpiSession::stop_workers() {
  impl_->stop_flag = impl_->lost ? 1 : 0;
  const int& lost = impl_->stop_flag;
  for (int r = 1; r < impl_->world.size(); ++r) {
    try {
      // A rank taken for dead may still be alive (only slow): tell it too, without waiting.
      if (impl_->dead[r]) impl_->orphans.push_back(impl_->world.isend(r, kStop, lost));
      else impl_->world.send(r, kStop, lost);
    } catch (const mpi::exception&) {
      // it is gone
    }
  }
}

#endif

}  // namespace kvscope::explore
