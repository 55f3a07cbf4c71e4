// parallel/timeline.cpp — span recording and the Chrome Trace Event writer.
//
// Each rank serialises its spans as JSON, world rank 0 gathers them (gather_strings) and
// writes {"traceEvents": [...], "displayTimeUnit": "ms"}: per rank a process_name /
// process_sort_index metadata event, per (rank, category) a thread_name event, and one
// complete event (ph "X", ts / dur in µs) per span. pid = world rank; tid = index of the
// category in (compute, comm, optimizer, then others in order of first appearance), so
// every rank's rows come in the same order.
#include "parallel/timeline.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace ptrain::parallel {

void Timeline::start() {
  spans_.clear();
  t0_ = Clock::now();
  recording_ = true;
}

double Timeline::now_us() const { return std::chrono::duration<double, std::micro>(Clock::now() - t0_).count(); }

void Timeline::add(std::string name, std::string category, double start_us, double end_us) {
  if (!recording_) return;
  spans_.push_back({std::move(name), std::move(category), start_us, end_us});
}

Timeline::Scope::Scope(Timeline* t, std::string name, std::string category)
    : t_(t && t->recording() ? t : nullptr), name_(std::move(name)), category_(std::move(category)) {
  if (t_) start_ = t_->now_us();
}

Timeline::Scope::~Scope() {
  if (t_) t_->add(std::move(name_), std::move(category_), start_, t_->now_us());
}

void write_chrome_trace(const Timeline& t, Communicator& world, const std::string& label, const std::string& path) {
  using nlohmann::json;
  json mine = {{"label", label}, {"spans", json::array()}};
  for (const Span& s : t.spans()) mine["spans"].push_back({s.name, s.category, s.start_us, s.end_us});
  const std::vector<std::string> all = world.gather_strings(mine.dump(), 0);
  if (world.rank() != 0) return;

  std::vector<std::string> categories = {"compute", "comm", "optimizer"};
  auto tid_of = [&](const std::string& c) {
    for (size_t i = 0; i < categories.size(); ++i)
      if (categories[i] == c) return static_cast<int>(i);
    categories.push_back(c);
    return static_cast<int>(categories.size() - 1);
  };
  json events = json::array();
  for (size_t r = 0; r < all.size(); ++r) {
    const json j = json::parse(all[r]);
    const int pid = static_cast<int>(r);
    const std::string lab = j.at("label").get<std::string>();
    events.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", pid}, {"tid", 0},
                      {"args", {{"name", lab.empty() ? fmt::format("rank {}", r) : fmt::format("rank {} {}", r, lab)}}}});
    events.push_back({{"ph", "M"}, {"name", "process_sort_index"}, {"pid", pid}, {"tid", 0},
                      {"args", {{"sort_index", pid}}}});
    std::vector<bool> named;
    for (const json& s : j.at("spans")) {
      const std::string cat = s.at(1).get<std::string>();
      const int tid = tid_of(cat);
      if (named.size() <= static_cast<size_t>(tid)) named.resize(tid + 1, false);
      if (!named[tid]) {
        named[tid] = true;
        events.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", pid}, {"tid", tid}, {"args", {{"name", cat}}}});
        events.push_back({{"ph", "M"}, {"name", "thread_sort_index"}, {"pid", pid}, {"tid", tid},
                          {"args", {{"sort_index", tid}}}});
      }
      const double ts = s.at(2).get<double>(), end = s.at(3).get<double>();
      events.push_back({{"ph", "X"}, {"name", s.at(0)}, {"cat", cat}, {"pid", pid}, {"tid", tid}, {"ts", ts},
                        {"dur", std::max(0.0, end - ts)}});
    }
  }
  const json doc = {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};

  const std::filesystem::path target(path), tmp(path + ".tmp");
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    PT_CHECK(out, "cannot write the trace {}\nHINT: check that the folder exists and is writable", tmp.string());
    out << doc.dump() << '\n';
    out.close();
    PT_CHECK(out, "writing the trace {} failed (disk full?)", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, target, ec);
  PT_CHECK(!ec, "cannot rename {} to {}: {}", tmp.string(), target.string(), ec.message());
}

}  // namespace ptrain::parallel
