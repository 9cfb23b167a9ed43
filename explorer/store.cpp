// SQLite results store (explorer/store.h).
#include "explorer/store.h"

#include <sqlite3.h>

#include <cmath>
#include <ctime>

#include "explorer/spec.h"
#include "kernels/io/error.h"

namespace kvscope::explore {

using nlohmann::json;

namespace {

class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql, const std::string& where) : db_(db), where_(where) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st_, nullptr) != SQLITE_OK)
      fail(where, std::string("sqlite: ") + sqlite3_errmsg(db) + " in: " + sql);
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  void text(int i, const std::string& s) { sqlite3_bind_text(st_, i, s.c_str(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void integer(int i, int64_t v) { sqlite3_bind_int64(st_, i, v); }
  void real(int i, double v) { sqlite3_bind_double(st_, i, v); }
  void null(int i) { sqlite3_bind_null(st_, i); }
  // SQLITE_ROW: true; SQLITE_DONE: false; else throws.
  bool step() {
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(where_, std::string("sqlite: ") + sqlite3_errmsg(db_));
  }
  void reset() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  std::string col_text(int i) {
    const unsigned char* t = sqlite3_column_text(st_, i);
    return t ? reinterpret_cast<const char*>(t) : "";
  }
  int64_t col_int(int i) { return sqlite3_column_int64(st_, i); }

 private:
  sqlite3* db_;
  std::string where_;
  sqlite3_stmt* st_ = nullptr;
};

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

Store::Store(const std::string& path) : path_(path) {
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
    const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail(path, "cannot open the database: " + why);
  }
  sqlite3_busy_timeout(db_, 10000);
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=NORMAL");
  std::string metrics = "CREATE TABLE IF NOT EXISTS metrics (hash TEXT PRIMARY KEY REFERENCES configs(hash), error TEXT";
  for (const auto& m : metric_names()) metrics += ", " + m + " REAL";
  metrics += ", json TEXT NOT NULL)";
  exec("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started TEXT, finished TEXT, spec TEXT, threads INTEGER, "
       "evaluated INTEGER, skipped INTEGER, failed INTEGER, status TEXT)");
  exec("CREATE TABLE IF NOT EXISTS configs (hash TEXT PRIMARY KEY, json TEXT NOT NULL, trace TEXT, policy TEXT, "
       "budget INTEGER, page_size INTEGER, hardware TEXT, partial INTEGER)");
  exec(metrics.c_str());
  exec("CREATE TABLE IF NOT EXISTS layer_metrics (hash TEXT, layer INTEGER, retained_mass REAL, PRIMARY KEY (hash, layer))");
}

Store::~Store() { sqlite3_close(db_); }

void Store::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string why = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    fail(path_, "sqlite: " + why + " in: " + sql);
  }
}

std::set<std::string> Store::done() {
  std::set<std::string> out;
  Stmt s(db_, "SELECT hash FROM metrics", path_);
  while (s.step()) out.insert(s.col_text(0));
  return out;
}

std::set<std::string> Store::hashes_where(const std::string& condition) {
  std::set<std::string> out;
  // A read-only statement: sqlite3_prepare refuses a second statement after the first.
  Stmt s(db_, "SELECT hash FROM configs JOIN metrics USING (hash) WHERE (" + condition + ")", path_);
  while (s.step()) out.insert(s.col_text(0));
  return out;
}

std::optional<json> Store::metrics(const std::string& hash) {
  Stmt s(db_, "SELECT json FROM metrics WHERE hash = ?", path_);
  s.text(1, hash);
  if (!s.step()) return std::nullopt;
  return json::parse(s.col_text(0));
}

void Store::put(const std::string& hash, const json& config, const json& m, bool partial) {
  exec("BEGIN IMMEDIATE");
  try {
    {
      Stmt s(db_, "INSERT INTO configs (hash, json, trace, policy, budget, page_size, hardware, partial) VALUES (?,?,?,?,?,?,?,?)",
             path_);
      s.text(1, hash);
      s.text(2, config.dump());
      s.text(3, config.value("trace", ""));
      s.text(4, config.value("policy", ""));
      s.integer(5, config.value("budget", int64_t{0}));
      s.integer(6, config.value("page_size", int64_t{1}));
      if (config.contains("hardware")) s.text(7, config["hardware"].value("preset", ""));
      else s.null(7);
      s.integer(8, partial ? 1 : 0);
      s.step();
    }
    {
      const auto& names = metric_names();
      std::string sql = "INSERT INTO metrics (hash, error";
      for (const auto& n : names) sql += ", " + n;
      sql += ", json) VALUES (?, ?";
      for (size_t i = 0; i < names.size(); ++i) sql += ", ?";
      sql += ", ?)";
      Stmt s(db_, sql, path_);
      s.text(1, hash);
      if (m.contains("error")) s.text(2, m["error"].get<std::string>());
      else s.null(2);
      int i = 3;
      for (const auto& n : names) {
        if (m.contains(n) && m[n].is_number()) s.real(i, m[n].get<double>());
        else s.null(i);
        ++i;
      }
      s.text(i, m.dump());
      s.step();
    }
    if (m.contains("retained_per_layer") && m["retained_per_layer"].is_array()) {
      Stmt s(db_, "INSERT INTO layer_metrics (hash, layer, retained_mass) VALUES (?,?,?)", path_);
      const json& l = m["retained_per_layer"];
      for (size_t k = 0; k < l.size(); ++k) {
        s.text(1, hash);
        s.integer(2, static_cast<int64_t>(k));
        s.real(3, l[k].get<double>());
        s.step();
        s.reset();
      }
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

int64_t Store::begin_run(const json& spec, unsigned threads) {
  Stmt s(db_, "INSERT INTO runs (started, spec, threads, status) VALUES (?, ?, ?, 'running')", path_);
  s.text(1, now_utc());
  s.text(2, spec.dump());
  s.integer(3, threads);
  s.step();
  return sqlite3_last_insert_rowid(db_);
}

void Store::end_run(int64_t id, uint64_t evaluated, uint64_t skipped, uint64_t failed, const std::string& status) {
  Stmt s(db_, "UPDATE runs SET finished = ?, evaluated = ?, skipped = ?, failed = ?, status = ? WHERE id = ?", path_);
  s.text(1, now_utc());
  s.integer(2, static_cast<int64_t>(evaluated));
  s.integer(3, static_cast<int64_t>(skipped));
  s.integer(4, static_cast<int64_t>(failed));
  s.text(5, status);
  s.integer(6, id);
  s.step();
}

json Store::last_spec() {
  Stmt s(db_, "SELECT spec FROM runs ORDER BY id DESC LIMIT 1", path_);
  if (!s.step()) return nullptr;
  return json::parse(s.col_text(0));
}

std::vector<Store::Row> Store::rows() {
  std::vector<Row> out;
  Stmt s(db_, "SELECT c.hash, c.json, m.json, c.partial FROM configs c JOIN metrics m ON m.hash = c.hash ORDER BY c.hash", path_);
  while (s.step()) {
    Row r;
    r.hash = s.col_text(0);
    r.config = json::parse(s.col_text(1));
    r.metrics = json::parse(s.col_text(2));
    r.partial = s.col_int(3) != 0;
    out.push_back(std::move(r));
  }
  return out;
}

void Store::ensure_validation_schema() {
  exec("CREATE TABLE IF NOT EXISTS validations (hash TEXT, model TEXT, prompts TEXT, device TEXT, policy TEXT, "
       "budget INTEGER, page_size INTEGER, kl REAL, top1 REAL, ppl REAL, ppl_full REAL, step_ms REAL, "
       "bytes_offloaded INTEGER, bytes_fetched INTEGER, sim_retained_mass REAL, sim_output_rel_l2 REAL, sim_tpot REAL, "
       "created TEXT, json TEXT, PRIMARY KEY (hash, model, prompts, device))");
  exec("CREATE TABLE IF NOT EXISTS validation_summary (id INTEGER PRIMARY KEY, created TEXT, model TEXT, prompts TEXT, "
       "device TEXT, n INTEGER, policies INTEGER, rho_quality REAL, rho_time REAL, quality_predictor TEXT, json TEXT)");
}

namespace {
// Binds j[key] by the column's kind: 't' text, 'i' integer, 'r' real; absent or null: NULL.
void bind_value(Stmt& s, int i, const json& j, const char* key, char kind) {
  if (!j.contains(key) || j[key].is_null()) return s.null(i);
  const json& v = j[key];
  if (kind == 't') return s.text(i, v.is_string() ? v.get<std::string>() : v.dump());
  if (!v.is_number()) return s.null(i);
  if (kind == 'i') return s.integer(i, v.get<int64_t>());
  const double d = v.get<double>();
  if (std::isfinite(d)) s.real(i, d);
  else s.null(i);
}
}  // namespace

void Store::put_validations(const std::vector<json>& rows, const json& summary) {
  ensure_validation_schema();
  static const std::pair<const char*, char> kCols[] = {
      {"hash", 't'},           {"model", 't'},          {"prompts", 't'},           {"device", 't'},
      {"policy", 't'},         {"budget", 'i'},         {"page_size", 'i'},         {"kl", 'r'},
      {"top1", 'r'},           {"ppl", 'r'},            {"ppl_full", 'r'},          {"step_ms", 'r'},
      {"bytes_offloaded", 'i'}, {"bytes_fetched", 'i'}, {"sim_retained_mass", 'r'}, {"sim_output_rel_l2", 'r'},
      {"sim_tpot", 'r'}};
  const std::string created = now_utc();
  exec("BEGIN IMMEDIATE");
  try {
    {
      std::string sql = "INSERT OR REPLACE INTO validations (", vals;
      for (const auto& c : kCols) sql += std::string(c.first) + ", ", vals += "?, ";
      sql += "created, json) VALUES (" + vals + "?, ?)";
      Stmt s(db_, sql, path_);
      for (const json& r : rows) {
        int i = 1;
        for (const auto& c : kCols) bind_value(s, i++, r, c.first, c.second);
        s.text(i++, created);
        s.text(i, r.dump());
        s.step();
        s.reset();
      }
    }
    {
      Stmt d(db_, "DELETE FROM validation_summary WHERE model IS ? AND prompts IS ? AND device IS ?", path_);
      bind_value(d, 1, summary, "model", 't');
      bind_value(d, 2, summary, "prompts", 't');
      bind_value(d, 3, summary, "device", 't');
      d.step();
    }
    {
      Stmt s(db_,
             "INSERT INTO validation_summary (created, model, prompts, device, n, policies, rho_quality, rho_time, "
             "quality_predictor, json) VALUES (?,?,?,?,?,?,?,?,?,?)",
             path_);
      s.text(1, created);
      bind_value(s, 2, summary, "model", 't');
      bind_value(s, 3, summary, "prompts", 't');
      bind_value(s, 4, summary, "device", 't');
      bind_value(s, 5, summary, "n", 'i');
      bind_value(s, 6, summary, "policies", 'i');
      bind_value(s, 7, summary, "rho_quality", 'r');
      bind_value(s, 8, summary, "rho_time", 'r');
      bind_value(s, 9, summary, "quality_predictor", 't');
      s.text(10, summary.dump());
      s.step();
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace kvscope::explore
