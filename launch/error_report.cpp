// The last resort: what reaches main (or a rank's handler) without an elbo::Error around it.
#include "launch/error_report.h"

#include <filesystem>
#include <new>

#include "core/error.h"
#include "io/memory.h"

namespace elbo {

namespace {

// libstdc++ spells it "filesystem error: <operation>: <reason> [path1] [path2]"; the paths go to
// the where.
ErrorReport filesystem_report(const std::filesystem::filesystem_error& e) {
  std::string what = e.what(), where = e.path1().string();
  std::string suffix = " [" + e.path1().string() + "]";
  if (!e.path2().empty()) {
    suffix += " [" + e.path2().string() + "]";
    where += ", " + e.path2().string();
  }
  const std::string prefix = "filesystem error: ";
  if (what.starts_with(prefix)) what.erase(0, prefix.size());
  if (what.ends_with(suffix)) what.erase(what.size() - suffix.size());
  if (where.empty()) where = "file system";
  return {what + " (" + where + ")", 2};
}

}  // namespace

ErrorReport report_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    return {err.what(), err.exit_code()};
  } catch (const std::bad_alloc&) {
    return {
        "out of memory: an allocation failed (std::bad_alloc); a smaller model or "
        "train.batch_size, or data.cache: never, needs less (" +
            bytes_text(available_memory_bytes()) + " of memory available)",
        2};
  } catch (const std::filesystem::filesystem_error& err) {
    return filesystem_report(err);
  } catch (const std::exception& err) {
    return {err.what(), 1};
  } catch (...) {
    return {"unknown exception", 1};
  }
}

}  // namespace elbo
