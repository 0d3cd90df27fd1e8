#include "loop/journal_log.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace dgdo {

namespace {

constexpr std::string_view kTag = "dgdo-engine: ";

bool g_prefixing = false;  // set once by prefix_stderr_for_journal, before any thread or fork

// The wrapped stream's state: the part of a line not yet ended by '\n'. glibc calls `write_lines`
// with the stream's lock held, so lines from several threads never interleave.
struct LineBuffer {
    std::string partial;
};

bool write_all(const char* p, size_t n) {
    while (n > 0) {
        const ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
    return true;
}

void emit(std::string& line) {
    line.insert(0, journal_priority(line));
    write_all(line.data(), line.size());
    line.clear();
}

ssize_t write_lines(void* cookie, const char* buf, size_t size) {
    auto& b = *static_cast<LineBuffer*>(cookie);
    for (size_t at = 0; at < size;) {
        const void* nl = std::memchr(buf + at, '\n', size - at);
        const size_t end = nl ? static_cast<size_t>(static_cast<const char*>(nl) - buf) + 1 : size;
        b.partial.append(buf + at, end - at);
        if (nl) emit(b.partial);
        at = end;
    }
    return static_cast<ssize_t>(size);  // a line the journal could not take is lost, never retried
}

int close_lines(void* cookie) {
    auto* b = static_cast<LineBuffer*>(cookie);
    if (!b->partial.empty()) emit(b->partial);
    delete b;
    return 0;
}

}  // namespace

std::string_view journal_priority(std::string_view line) {
    if (!line.starts_with(kTag)) return "<6>";
    line.remove_prefix(kTag.size());
    if (line.size() >= 2 && line[1] == ' ') {
        switch (line[0]) {
            case '!': return "<4>";
            case 'x': return "<5>";
            case '=': return "<6>";
            default: break;
        }
    }
    return "<3>";
}

bool is_journal_stream(const char* journal_stream, int fd) {
    if (journal_stream == nullptr) return false;
    unsigned long long dev = 0, ino = 0;
    char tail = 0;
    if (std::sscanf(journal_stream, "%llu:%llu%c", &dev, &ino, &tail) != 2) return false;
    struct stat st {};
    if (fstat(fd, &st) != 0) return false;
    return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino;
}

bool prefix_stderr_for_journal() {
    if (g_prefixing || !is_journal_stream(std::getenv("JOURNAL_STREAM"), STDERR_FILENO)) return false;
    auto* b = new LineBuffer;
    FILE* f = fopencookie(b, "w", cookie_io_functions_t{nullptr, write_lines, nullptr, close_lines});
    if (f == nullptr) {
        delete b;
        return false;
    }
    setvbuf(f, nullptr, _IOLBF, 4096);  // a line reaches the journal when it ends, as unbuffered stderr did
    std::fflush(stderr);
    stderr = f;  // glibc's stderr is a variable; every fprintf(stderr, ...) now goes through us
    g_prefixing = true;
    return true;
}

size_t with_journal_priority(char* buf, size_t n, size_t cap) {
    if (!g_prefixing) return n;
    const std::string_view p = journal_priority(std::string_view(buf, n));
    if (n + p.size() > cap) return n;
    std::memmove(buf + p.size(), buf, n);
    std::memcpy(buf, p.data(), p.size());
    return n + p.size();
}

}  // namespace dgdo
