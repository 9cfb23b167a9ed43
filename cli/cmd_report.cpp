// report: a static HTML page (figures + tables) from an explore database. The page is drawn
// by scripts/report.py with matplotlib; this subcommand finds the project's Python, checks
// the inputs and passes the arguments through (docs/report.md).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "kernels/io/error.h"

#ifndef KVSCOPE_SOURCE_DIR
#error "cli/CMakeLists.txt defines KVSCOPE_SOURCE_DIR (the source tree, for scripts/report.py and .venv)"
#endif

namespace kvscope::cli {

namespace {

bool is_file(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_executable(const std::string& p) { return is_file(p) && ::access(p.c_str(), X_OK) == 0; }

// The interpreter: $KVSCOPE_PYTHON, else the source tree's .venv (scripts/setup.sh), else
// python3 from PATH.
std::string find_python() {
  if (const char* env = std::getenv("KVSCOPE_PYTHON"); env && *env) {
    if (!is_executable(env)) fail(env, "KVSCOPE_PYTHON is not an executable file");
    return env;
  }
  const std::string venv = std::string(KVSCOPE_SOURCE_DIR) + "/.venv/bin/python";
  if (is_executable(venv)) return venv;
  return "python3";
}

// This binary's own path (the Python side runs `kvscope hw --show` through it).
std::string self_path() {
  std::vector<char> buf(PATH_MAX + 1, '\0');
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), PATH_MAX);
  return n > 0 ? std::string(buf.data(), static_cast<size_t>(n)) : std::string();
}

// Runs argv[0] (searched in PATH when it has no '/') and returns its exit status.
int run_child(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) fail(args[0], std::string("cannot start: ") + std::strerror(errno));
  if (pid == 0) {
    ::execvp(argv[0], argv.data());
    const std::string msg = "kvscope: error: " + args[0] + ": cannot run: " + std::strerror(errno) + "\n";
    (void)!::write(2, msg.data(), msg.size());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) fail(args[0], std::string("waitpid: ") + std::strerror(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

}  // namespace

void add_report_commands(CLI::App& app) {
  auto* c = app.add_subcommand("report",
                               "Write a static HTML report (Pareto front, retained mass, attention heatmaps, timing, "
                               "what-if, validation) of an explore database (docs/report.md)");
  static std::string db, out;
  static std::vector<std::string> whatif;
  static int sink_keys = 4;
  c->add_option("--db", db, "Results database (kvscope explore)")->required();
  c->add_option("--out,-o", out, "Output folder: index.html and the PNG figures beside it")->required();
  c->add_option("--whatif", whatif, "A `kvscope whatif --out` JSON file to plot as what-if curves (repeatable)");
  c->add_option("--sink-keys", sink_keys, "Keys 0..N-1 count as attention sinks in the heatmaps (default 4, as trace-info)")
      ->check(CLI::Range(1, 1 << 20));
  c->callback([] {
    if (!is_file(db)) fail(db, "no such database (run kvscope explore --spec ... --db " + db + " first)");
    for (const auto& w : whatif)
      if (!is_file(w)) fail(w, "no such what-if file (kvscope whatif ... --out " + w + ")");
    const std::string script = std::string(KVSCOPE_SOURCE_DIR) + "/scripts/report.py";
    if (!is_file(script)) fail(script, "report script missing from the source tree");
    std::vector<std::string> args = {find_python(), script, "--db", db, "--out", out, "--sink-keys",
                                     std::to_string(sink_keys)};
    for (const auto& w : whatif) {
      args.push_back("--whatif");
      args.push_back(w);
    }
    if (const std::string self = self_path(); !self.empty()) {
      args.push_back("--kvscope");
      args.push_back(self);
    }
    const int rc = run_child(args);
    if (rc != 0) throw Error(script + ": exited with status " + std::to_string(rc) + " (its message is above)");
  });
}

}  // namespace kvscope::cli
