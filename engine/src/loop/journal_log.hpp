// Log levels the journal can filter on. Engine lines carry a glyph after "dgdo-engine: "
// ("!" something went wrong, "x" something ends, "=" a state reached), no level word. Under
// systemd, stderr is a stream to journald, which reads a leading "<N>" on each line as the line's
// syslog priority (SyslogLevelPrefix=yes, the default; systemd.exec(5)). So at start, when
// stderr IS that stream ($JOURNAL_STREAM names its device and inode), stderr is wrapped once to
// put the priority in front of every line by its glyph, and `journalctl -p warning` works without
// touching any of the fprintf(stderr, ...) calls. Anywhere else (a terminal, `dgdo run`'s pipe,
// a test's) nothing changes.
#pragma once

#include <cstddef>
#include <string_view>

namespace dgdo {

// The "<N>" prefix for one engine line, by its glyph: "!" warning <4>, "x" notice <5>, "=" and
// any other line info <6>; "dgdo-engine: " followed by text and no glyph (a bad flag or config
// file, loop/cli.cpp: the engine exits 2) err <3>.
std::string_view journal_priority(std::string_view line);

// True when `journal_stream` ($JOURNAL_STREAM, "DEVICE:INODE") names the file open on `fd`: only
// then is that fd the journal's stream (an inherited variable with stderr redirected is not).
bool is_journal_stream(const char* journal_stream, int fd);

// Wraps stderr (a line-buffered stream that prefixes each line, then writes it to fd 2) when fd 2
// is the journal's stream; true when it did. Call once, at start, before any thread.
bool prefix_stderr_for_journal();

// For a line written straight to fd 2 (a forked child must not use stdio): inserts the prefix in
// front of buf[0, n) in place when stderr is prefixed; returns the new length (n when there is
// no room, cap, or nothing to add). Allocates nothing.
size_t with_journal_priority(char* buf, size_t n, size_t cap);

}  // namespace dgdo
