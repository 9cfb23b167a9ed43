#pragma once
// The results database (docs/explore.md, "Results: SQLite schema"). One connection; every
// finished configuration is written in one transaction, so a kill at any moment leaves
// the whole result or nothing. Not thread-safe: one writer owns it.
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

struct sqlite3;

namespace kvscope::explore {

class Store {
 public:
  explicit Store(const std::string& path);  // opens or creates; WAL; the schema
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Hashes with a stored result (resume skips them).
  std::set<std::string> done();
  // The stored metrics object of a hash.
  std::optional<nlohmann::json> metrics(const std::string& hash);
  // Hashes of the stored results meeting an SQL condition over the columns of configs
  // joined with metrics (e.g. "budget <= 64 AND tpot < 0.01"); a bad condition is an
  // Error naming the database and SQLite's message.
  std::set<std::string> hashes_where(const std::string& condition);
  // configs + metrics + layer_metrics rows of one configuration, in one transaction.
  void put(const std::string& hash, const nlohmann::json& config, const nlohmann::json& metrics, bool partial);

  int64_t begin_run(const nlohmann::json& spec, unsigned threads);
  void end_run(int64_t id, uint64_t evaluated, uint64_t skipped, uint64_t failed, const std::string& status);
  // The spec of the latest run (null when none).
  nlohmann::json last_spec();

  struct Row {
    std::string hash;
    nlohmann::json config, metrics;
    bool partial = false;
  };
  // Every stored result, ordered by hash.
  std::vector<Row> rows();

  // Validation results (docs/validation.md), tables `validations` and
  // `validation_summary` (created on first use). In one transaction: each row (an object
  // with the `validations` columns as keys; missing or null keys are stored as NULL)
  // replaces the row of the same (hash, model, prompts, device); the summary (keys as the
  // `validation_summary` columns but id and created) replaces the summary of the same
  // (model, prompts, device).
  void put_validations(const std::vector<nlohmann::json>& rows, const nlohmann::json& summary);

 private:
  void exec(const char* sql);
  void ensure_validation_schema();
  std::string path_;
  sqlite3* db_ = nullptr;
};

}  // namespace kvscope::explore
