#include "loop/shm_segment.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>

#include "dgdo/ring.h"

namespace dgdo {

namespace {

bool pid_alive(int32_t pid) {
    if (pid <= 0) return false;
    return kill(pid, 0) == 0 || errno == EPERM;  // EPERM: it exists, it is just not ours to signal
}

uint64_t mono_now() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

SegmentOwner inspect_segment(const std::string& name, bool engine_produces, uint64_t now_mono_ns,
                             uint64_t stale_after_ns) {
    SegmentOwner o;
    const int fd = shm_open(name.c_str(), O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return o;
    o.exists = true;
    struct stat st {};
    if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < DGDO_RING_HEADER_SIZE) {
        close(fd);
        return o;  // too short to be a ring: garbage
    }
    void* p = mmap(nullptr, DGDO_RING_HEADER_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return o;
    auto* h = static_cast<dgdo_ring_header*>(p);
    // Only the header page is mapped; the check reads header fields and compares sizes.
    o.valid = dgdo_ring_check(h, static_cast<size_t>(st.st_size), 0) == DGDO_RING_OK;
    if (o.valid) {
        o.pid = engine_produces ? h->producer_pid : h->consumer_pid;
        o.epoch = h->epoch;
        const uint64_t hb = engine_produces ? DGDO_LOAD(&h->producer_heartbeat_ns, relaxed)
                                            : DGDO_LOAD(&h->consumer_heartbeat_ns, relaxed);
        if (hb != 0) o.heartbeat_age_ns = now_mono_ns > hb ? now_mono_ns - hb : 0;
        o.pid_alive = pid_alive(o.pid) && o.pid != static_cast<int32_t>(getpid());
        o.live = o.pid_alive && o.heartbeat_age_ns < stale_after_ns;
    }
    munmap(p, DGDO_RING_HEADER_SIZE);
    return o;
}

std::string describe_owner(const SegmentOwner& o) {
    char buf[160];
    if (!o.valid) return "not a ring of this layout";
    const char* why = !o.pid_alive ? "pid dead" : o.live ? "heartbeat fresh" : "heartbeat old";
    if (o.heartbeat_age_ns == UINT64_MAX)
        std::snprintf(buf, sizeof buf, "of pid %d epoch %llu (%s, never beat)", o.pid,
                      static_cast<unsigned long long>(o.epoch), why);
    else
        std::snprintf(buf, sizeof buf, "of pid %d epoch %llu (%s, heartbeat %llu ms ago)", o.pid,
                      static_cast<unsigned long long>(o.epoch), why,
                      static_cast<unsigned long long>(o.heartbeat_age_ns / 1000000));
    return buf;
}

int reclaim_segment(const std::string& name, bool engine_produces, uint64_t now_mono_ns,
                    uint64_t stale_after_ns) {
    const SegmentOwner old = inspect_segment(name, engine_produces, now_mono_ns, stale_after_ns);
    if (old.live) {
        std::fprintf(stderr, "dgdo-engine: ! segment %s belongs to a live engine %s; not taking it over\n",
                     name.c_str(), describe_owner(old).c_str());
        return -EBUSY;
    }
    if (old.exists) {
        // A leftover of a crashed run: its sidecar may still map it (and salvage from it); the
        // next owner starts from a fresh, zeroed object under the same name.
        std::fprintf(stderr, "dgdo-engine: = stale segment %s %s, removing\n", name.c_str(),
                     describe_owner(old).c_str());
        shm_unlink(name.c_str());
    }
    return 0;
}

int ShmSegment::create(const std::string& name, uint64_t capacity, uint64_t epoch, bool engine_produces,
                       uint64_t stale_after_ns) {
    destroy();
    if (const int rc = reclaim_segment(name, engine_produces, mono_now(), stale_after_ns); rc != 0) return rc;
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    name_ = name;
    const size_t size = dgdo_ring_segment_size(capacity);
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
        const int err = -errno;
        close(fd);
        destroy();
        return err;
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int map_err = p == MAP_FAILED ? -errno : 0;
    close(fd);
    if (map_err) {
        destroy();
        return map_err;
    }
    base_ = p;
    size_ = size;
    return dgdo_ring_format(base_, capacity, epoch);
}

void ShmSegment::destroy() {
    if (base_) munmap(base_, size_);
    base_ = nullptr;
    size_ = 0;
    if (!name_.empty()) shm_unlink(name_.c_str());
    name_.clear();
}

}  // namespace dgdo
