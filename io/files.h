// Files elbo writes whole: under a temporary name unique to this process, synced, then renamed
// into place, so that a reader (or a crash) only ever sees the old file or the complete new one.
// A failed write removes its temporary and says what failed in one line: a full disk or an I/O
// error is the machine's fault (exit 1); a path the user chose that cannot be written (permission,
// a read-only file system, a name too long, a file where a directory should be) is bad input
// (exit 2).
#pragma once

#include <string>
#include <string_view>

namespace elbo {

// "<path>.tmp.<pid>": two processes writing one path never share a temporary.
std::string temporary_name_for(const std::string& path);
// Whether `file_name` is a temporary made by temporary_name_for for a file named `base_name`.
bool is_temporary_name_of(const std::string& file_name, const std::string& base_name);

// Creates `path` (which must not exist; a symlink there is not followed), writes `bytes`, fsyncs.
// On failure the partial file is removed. `what` names the file in errors ("checkpoint").
void write_new_file_synced(const std::string& path, std::string_view bytes, const std::string& what);
// rename(2) `from` over `to` (replacing a symlink at `to` itself, never its target), then fsyncs
// the directory so that the rename survives a power cut.
void rename_into_place(const std::string& from, const std::string& to, const std::string& what);
// Both of the above through temporary_name_for(path).
void write_file_atomically(const std::string& path, std::string_view bytes, const std::string& what);

// The time now as ISO 8601 UTC ("2026-12-01T19:30:00Z"), for the files elbo stamps.
std::string iso8601_utc_now();

// fsync by path: a file's bytes, or a directory's entries, reach the disk before we go on.
void fsync_path(const std::string& path, bool directory);

// "cannot <action> <what>: <strerror(err)> (<path>)", as bad input or a machine failure (above).
[[noreturn]] void throw_file_error(const std::string& action, const std::string& what,
                                   const std::string& path, int err);

}  // namespace elbo
