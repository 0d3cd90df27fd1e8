#include "store/snapshot.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "store/crc32c.hpp"
#include "store/journal.hpp"

namespace dgdo {

namespace {

std::string snapshot_name(uint64_t index) {
    char name[40];
    std::snprintf(name, sizeof name, "%020" PRIu64 ".snap", index);
    return name;
}

template <class T>
void store(uint8_t* p, T v) {
    std::memcpy(p, &v, sizeof v);
}
template <class T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

}  // namespace

std::vector<SnapshotFile> list_snapshots(const std::string& dir) {
    std::vector<SnapshotFile> v;
    DIR* d = opendir(dir.c_str());
    if (!d) return v;
    while (const dirent* e = readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() != 25 || !name.ends_with(".snap")) continue;
        if (!std::all_of(name.begin(), name.begin() + 20, [](char c) { return c >= '0' && c <= '9'; })) continue;
        v.push_back({std::strtoull(name.substr(0, 20).c_str(), nullptr, 10), dir + "/" + name});
    }
    closedir(d);
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.index > b.index; });
    return v;
}

int write_snapshot(const std::string& dir, uint64_t index, uint64_t digest, const std::string& payload) {
    uint8_t h[kSnapshotHeader] = {};
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    store(h, kSnapshotMagic);
    store(h + 8, kSnapshotVersion);
    store(h + 12, kSnapshotHeader);
    store(h + 16, index);
    store(h + 24, static_cast<uint64_t>(payload.size()));
    store(h + 32, digest);
    store(h + 40, crc32c(0, payload.data(), payload.size()));
    store(h + 48, static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec));
    store(h + 60, crc32c(0, h, 60));
    const std::string final_path = dir + "/" + snapshot_name(index);
    const std::string tmp = final_path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    auto put = [fd](const void* p, size_t n) {
        const char* c = static_cast<const char*>(p);
        while (n > 0) {
            const ssize_t w = ::write(fd, c, n);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) return false;
            c += w;
            n -= static_cast<size_t>(w);
        }
        return true;
    };
    int rc = 0;
    if (!put(h, sizeof h) || !put(payload.data(), payload.size()) || fsync(fd) != 0) rc = -errno;
    ::close(fd);
    if (rc == 0 && rename(tmp.c_str(), final_path.c_str()) != 0) rc = -errno;
    if (rc != 0) {
        unlink(tmp.c_str());
        return rc;
    }
    return fsync_dir(dir);
}

size_t remove_partial_snapshots(const std::string& dir) {
    std::vector<std::string> stale;
    DIR* d = opendir(dir.c_str());
    if (!d) return 0;
    while (const dirent* e = readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() == 29 && name.ends_with(".snap.tmp")) stale.push_back(dir + "/" + name);  // write_snapshot's
    }
    closedir(d);
    size_t removed = 0;
    for (const std::string& path : stale) removed += unlink(path.c_str()) == 0;
    if (removed) fsync_dir(dir);
    return removed;
}

SnapshotRead read_snapshot(const std::string& path) {
    SnapshotRead r;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        r.unreadable = errno != ENOENT;  // (ENOENT: pruned since it was listed)
        r.problem = std::strerror(errno);
        return r;
    }
    uint8_t h[kSnapshotHeader];
    struct stat st{};
    const bool head_ok = fstat(fd, &st) == 0 && ::pread(fd, h, sizeof h, 0) == static_cast<ssize_t>(sizeof h);
    if (!head_ok || load<uint64_t>(h) != kSnapshotMagic || load<uint32_t>(h + 60) != crc32c(0, h, 60)) {
        ::close(fd);
        r.problem = "bad header";
        return r;
    }
    if (load<uint32_t>(h + 8) < 1 || load<uint32_t>(h + 8) > kSnapshotVersion) {
        ::close(fd);
        r.newer = load<uint32_t>(h + 8) > kSnapshotVersion;
        r.problem = "snapshot format " + std::to_string(load<uint32_t>(h + 8)) + ", this engine reads 1 to " +
                    std::to_string(kSnapshotVersion);
        return r;
    }
    const uint64_t length = load<uint64_t>(h + 24);
    if (static_cast<uint64_t>(st.st_size) != kSnapshotHeader + length) {
        ::close(fd);
        r.problem = "length " + std::to_string(st.st_size) + " bytes, header says " +
                    std::to_string(kSnapshotHeader + length);
        return r;
    }
    r.payload.resize(length);
    size_t got = 0;
    while (got < length) {
        const ssize_t n = ::pread(fd, r.payload.data() + got, length - got, static_cast<off_t>(kSnapshotHeader + got));
        if (n <= 0) break;
        got += static_cast<size_t>(n);
    }
    ::close(fd);
    if (got != length || crc32c(0, r.payload.data(), length) != load<uint32_t>(h + 40)) {
        r.problem = "checksum mismatch";
        r.payload.clear();
        return r;
    }
    r.index = load<uint64_t>(h + 16);
    r.digest = load<uint64_t>(h + 32);
    r.written_real_ns = load<uint64_t>(h + 48);
    return r;
}

void prune_state(const std::string& snapshot_dir, const std::string& journal_dir, size_t keep) {
    const auto snaps = list_snapshots(snapshot_dir);
    if (snaps.empty()) return;
    const size_t kept = std::min(keep, snaps.size());
    for (size_t i = kept; i < snaps.size(); ++i) unlink(snaps[i].path.c_str());
    const uint64_t oldest_needed = snaps[kept - 1].index;
    const auto segs = list_segments(journal_dir);
    bool removed = false;
    for (size_t i = 0; i + 1 < segs.size(); ++i) {  // the newest segment is never removed: it is being written
        if (segs[i + 1].first > oldest_needed) break;
        unlink(segs[i].path.c_str());
        removed = true;
    }
    if (removed || kept < snaps.size()) {
        fsync_dir(journal_dir);
        fsync_dir(snapshot_dir);
    }
}

SnapshotWriter::SnapshotWriter(std::string snapshot_dir, std::string journal_dir, size_t keep)
    : snap_dir_(std::move(snapshot_dir)), journal_dir_(std::move(journal_dir)), keep_(keep), thread_([this] { run(); }) {}

SnapshotWriter::~SnapshotWriter() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

bool SnapshotWriter::busy() const {
    std::lock_guard<std::mutex> lock(mu_);
    return has_job_ || writing_;
}

bool SnapshotWriter::submit(uint64_t index, uint64_t digest, std::string&& payload) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (has_job_ || writing_) return false;
        index_ = index;
        digest_ = digest;
        payload_ = std::move(payload);
        has_job_ = true;
    }
    cv_.notify_all();
    return true;
}

void SnapshotWriter::wait_idle() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !has_job_ && !writing_; });
}

void SnapshotWriter::run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        cv_.wait(lock, [this] { return stop_ || has_job_; });
        if (!has_job_) return;  // stop_ with nothing left to write
        has_job_ = false;
        writing_ = true;
        const uint64_t index = index_, digest = digest_;
        std::string payload = std::move(payload_);
        lock.unlock();
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = write_snapshot(snap_dir_, index, digest, payload);
        if (rc == 0) prune_state(snap_dir_, journal_dir_, keep_);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (rc == 0)
            std::fprintf(stderr, "dgdo-engine: = snapshot at record %" PRIu64 " written (%zu bytes, %.1f ms, digest %016" PRIx64 ")\n",
                         index, payload.size(), ms, digest);
        else
            std::fprintf(stderr, "dgdo-engine: ! snapshot at record %" PRIu64 " failed: %s\n", index, std::strerror(-rc));
        lock.lock();
        writing_ = false;
        cv_.notify_all();
    }
}

}  // namespace dgdo
