#include "store/journal.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "store/crc32c.hpp"

namespace dgdo {

namespace {

uint32_t aligned8(uint32_t n) { return (n + 7u) & ~7u; }

template <class T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// A read-only view of a whole file.
struct Mapped {
    const uint8_t* data = nullptr;
    size_t size = 0;
    int err = 0;
    explicit Mapped(const std::string& path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            err = errno;
            return;
        }
        struct stat st{};
        if (fstat(fd, &st) == 0 && st.st_size > 0) {
            size = static_cast<size_t>(st.st_size);
            void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                err = errno;
                size = 0;
            } else {
                data = static_cast<const uint8_t*>(p);
                madvise(p, size, MADV_SEQUENTIAL);
            }
        }
        ::close(fd);
    }
    ~Mapped() {
        if (data) munmap(const_cast<uint8_t*>(data), size);
    }
    Mapped(const Mapped&) = delete;
    Mapped& operator=(const Mapped&) = delete;
};

uint64_t file_size(const std::string& path) {
    struct stat st{};
    return stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

bool write_all(int fd, const char* p, size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
    return true;
}

}  // namespace

const char* to_string(FsyncPolicy p) {
    switch (p) {
    case FsyncPolicy::Never: return "never";
    case FsyncPolicy::Interval: return "interval";
    case FsyncPolicy::Batch: return "batch";
    }
    return "?";
}

std::optional<FsyncPolicy> parse_fsync(const std::string& s) {
    if (s == "never") return FsyncPolicy::Never;
    if (s == "interval") return FsyncPolicy::Interval;
    if (s == "batch") return FsyncPolicy::Batch;
    return std::nullopt;
}

void encode_input(const InputEvent& ev, int32_t& type, std::string& payload) {
    payload.clear();
    std::visit(
        [&](const auto& e) {
            using T = std::decay_t<decltype(e)>;
            auto bytes = [&](const auto& rec) { payload.assign(reinterpret_cast<const char*>(&rec), sizeof rec); };
            if constexpr (std::is_same_v<T, SessionOpen>) {
                type = DGDO_IN_SESSION_OPEN;
                bytes(e.rec);
            } else if constexpr (std::is_same_v<T, SessionClose>) {
                type = DGDO_IN_SESSION_CLOSE;
                bytes(e.rec);
            } else if constexpr (std::is_same_v<T, dgdo_in_driver_location>) {
                type = DGDO_IN_DRIVER_LOCATION;
                bytes(e);
            } else if constexpr (std::is_same_v<T, dgdo_in_driver_status>) {
                type = DGDO_IN_DRIVER_STATUS;
                bytes(e);
            } else if constexpr (std::is_same_v<T, dgdo_in_ride_request>) {
                type = DGDO_IN_RIDE_REQUEST;
                bytes(e);
            } else if constexpr (std::is_same_v<T, dgdo_in_order_command>) {
                type = DGDO_IN_ORDER_COMMAND;
                bytes(e);
            } else if constexpr (std::is_same_v<T, dgdo_in_nearby>) {
                type = DGDO_IN_NEARBY;
                bytes(e);
            } else if constexpr (std::is_same_v<T, Tick>) {
                type = JOURNAL_TICK;
                bytes(e.now_ns);
            } else if constexpr (std::is_same_v<T, WorkerDetached>) {
                type = JOURNAL_WORKER_DETACHED;
                const uint64_t w = e.worker;  // u16 worker in 8 bytes
                bytes(w);
            } else if constexpr (std::is_same_v<T, Recovered>) {
                type = JOURNAL_RECOVERED;
                bytes(e.gap);
            } else if constexpr (std::is_same_v<T, Committed>) {
                type = JOURNAL_COMMITTED;
                const uint64_t v[2] = {e.real_ns, e.upto};
                bytes(v);
            } else {
                static_assert(sizeof(T) == 0, "every input needs a journal encoding");
            }
        },
        ev);
}

std::optional<InputEvent> decode_input(int32_t type, const uint8_t* payload, uint32_t len) {
    if (type == JOURNAL_TICK) {
        if (len != 8) return std::nullopt;
        return InputEvent{Tick{load<uint64_t>(payload)}};
    }
    if (type == JOURNAL_WORKER_DETACHED) {
        if (len != 8) return std::nullopt;
        const uint64_t w = load<uint64_t>(payload);
        if (w > UINT16_MAX) return std::nullopt;
        return InputEvent{WorkerDetached{static_cast<uint16_t>(w)}};
    }
    if (type == JOURNAL_RECOVERED) {
        if (len != 8) return std::nullopt;
        return InputEvent{Recovered{load<uint64_t>(payload)}};
    }
    if (type == JOURNAL_COMMITTED) {
        if (len != 16) return std::nullopt;
        return InputEvent{Committed{load<uint64_t>(payload), load<uint64_t>(payload + 8)}};
    }
    return decode_inbound(type, payload, len);
}

std::string segment_name(uint64_t first) {
    char name[40];
    std::snprintf(name, sizeof name, "%020" PRIu64 ".dgj", first);
    return name;
}

std::vector<JournalSegment> list_segments(const std::string& dir) {
    std::vector<JournalSegment> segs;
    DIR* d = opendir(dir.c_str());
    if (!d) return segs;
    while (const dirent* e = readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() != 24 || !name.ends_with(".dgj")) continue;
        if (!std::all_of(name.begin(), name.begin() + 20, [](char c) { return c >= '0' && c <= '9'; })) continue;
        segs.push_back({std::strtoull(name.substr(0, 20).c_str(), nullptr, 10), dir + "/" + name});
    }
    closedir(d);
    std::sort(segs.begin(), segs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    return segs;
}

// True when a record with a good checksum and an index from `expected` on starts anywhere in
// [from, end of file) at a record boundary's alignment: committed data behind a bad record, which a
// write cut by a crash never leaves (it only ever loses the end). The index bound keeps stale bytes
// of an older life of the disk block (records of lower indexes) from counting.
bool good_record_after(const Mapped& m, uint64_t from, uint64_t expected) {
    for (uint64_t off = (from + 7u) & ~uint64_t{7}; off + kRecordHeader <= m.size; off += 8) {
        const uint8_t* r = m.data + off;
        const uint32_t length = load<uint32_t>(r);
        if (length < kRecordHeader || length - kRecordHeader > kMaxPayload || off + aligned8(length) > m.size) continue;
        if (load<uint64_t>(r + 8) < expected) continue;
        if (load<uint32_t>(r + 4) == crc32c(0, r + 8, length - 8)) return true;
    }
    return false;
}

JournalEnd read_journal(const std::string& dir, uint64_t from, const RecordFn& fn, bool repair) {
    JournalEnd end;
    end.next_index = from;
    const auto segs = list_segments(dir);
    if (segs.empty()) return end;
    size_t start = 0;
    while (start + 1 < segs.size() && segs[start + 1].first <= from) ++start;
    if (segs[start].first > from) {
        end.gap = true;
        end.problem = "the journal starts at record " + std::to_string(segs[start].first) + ", after record " +
                      std::to_string(from) + " that the state needs next";
        return end;
    }
    uint64_t expected = segs[start].first;
    size_t bad_seg = segs.size();  // first segment (index) not read to its end
    uint64_t bad_off = 0;
    bool torn = false;  // the bad bytes are a torn tail: the end of the last segment, nothing good after them
    for (size_t i = start; i < segs.size(); ++i) {
        const JournalSegment& s = segs[i];
        const bool last = i + 1 == segs.size();
        if (s.first != expected) {  // a segment missing or out of place: no crash leaves that
            end.problem = s.path + " starts at record " + std::to_string(s.first) + ", expected " +
                          std::to_string(expected);
            bad_seg = i;
            bad_off = 0;
            break;
        }
        const Mapped m(s.path);
        if (m.err != 0) {
            // Not a torn write: the bytes may all be there, we are only kept from them (a file of
            // another owner, a backup put back as root). Read as empty it would be cut as a torn
            // header and every order it holds lost.
            end.problem = "cannot read " + s.path + ": " + std::strerror(m.err);
            end.unreadable = true;
            return end;
        }
        if (m.size >= kSegmentHeader && load<uint64_t>(m.data) == kJournalMagic &&
            load<uint32_t>(m.data + 8) > kJournalVersion) {
            // Not damage: a newer engine wrote it (a rollback). Cutting it would lose what it holds.
            end.problem = s.path + ": journal format " + std::to_string(load<uint32_t>(m.data + 8)) +
                          ", newer than this engine's " + std::to_string(kJournalVersion);
            end.newer = true;
            return end;
        }
        if (m.size < kSegmentHeader || load<uint64_t>(m.data) != kJournalMagic ||
            load<uint32_t>(m.data + 8) != kJournalVersion || load<uint64_t>(m.data + 16) != s.first) {
            end.problem = s.path + ": no valid segment header";
            bad_seg = i;
            bad_off = 0;
            torn = last && !good_record_after(m, 8, expected);  // killed while starting it
            break;
        }
        uint64_t off = kSegmentHeader;
        while (off + kRecordHeader <= m.size) {
            const uint8_t* r = m.data + off;
            const uint32_t length = load<uint32_t>(r);
            if (length < kRecordHeader || length - kRecordHeader > kMaxPayload || off + aligned8(length) > m.size) {
                end.problem = s.path + ": torn record at byte " + std::to_string(off);
                break;
            }
            const uint64_t index = load<uint64_t>(r + 8);
            if (index != expected || load<uint32_t>(r + 4) != crc32c(0, r + 8, length - 8)) {
                end.problem = s.path + ": bad record at byte " + std::to_string(off) +
                              (index != expected ? " (index)" : " (checksum)");
                break;
            }
            if (index >= from) {
                fn(index, load<int32_t>(r + 16), r + kRecordHeader, length - kRecordHeader);
                ++end.records;
            }
            ++expected;
            off += aligned8(length);
        }
        end.path = s.path;
        end.offset = off;
        if (off < m.size) {
            if (end.problem.empty()) end.problem = s.path + ": torn record at byte " + std::to_string(off);
            bad_seg = i;
            bad_off = off;
            torn = last && !good_record_after(m, off + 8, expected);
            break;
        }
    }
    if (bad_seg < segs.size() && !torn) {
        // Damage, not a crash's torn write: records the state may depend on follow it (later in this
        // segment, or in later segments). Nothing is cut, nothing is read past it: the caller refuses.
        end.damaged = true;
        end.problem += bad_seg + 1 < segs.size()
                           ? "; " + std::to_string(segs.size() - bad_seg - 1) + " later segment(s) follow it"
                           : "; good records follow it";
        return end;
    }
    if (bad_seg < segs.size()) {
        end.cut = true;
        end.cut_bytes = file_size(segs[bad_seg].path) - std::min(file_size(segs[bad_seg].path), bad_off);
        if (bad_off == 0 && end.path == segs[bad_seg].path) end.path.clear();  // the header itself was bad
        if (repair) {
            if (bad_off >= kSegmentHeader) {
                if (truncate(segs[bad_seg].path.c_str(), static_cast<off_t>(bad_off)) != 0)
                    end.problem += "; truncate failed: " + std::string(std::strerror(errno));
            } else {
                unlink(segs[bad_seg].path.c_str());
            }
            fsync_dir(dir);
        }
    }
    if (expected < from) {  // the snapshot is ahead of the journal's end: the next record starts a fresh segment
        end.path.clear();
        end.offset = 0;
        expected = from;
    }
    end.next_index = expected;
    return end;
}

int fsync_dir(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    const int rc = fsync(fd) == 0 ? 0 : -errno;
    ::close(fd);
    return rc;
}

// ---- writer ------------------------------------------------------------------

JournalWriter::JournalWriter(JournalOptions opt) : opt_(std::move(opt)) { batch_.reserve(1 << 16); }

JournalWriter::~JournalWriter() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (syncer_.joinable()) syncer_.join();
    if (fd_ >= 0) {
        fdatasync(fd_);  // a clean stop leaves nothing unsynced, whatever the policy
        ::close(fd_);
    }
}

int JournalWriter::open(const JournalEnd& end) {
    next_index_ = end.next_index;
    if (end.path.empty()) {
        if (const int rc = start_segment(); rc != 0) return rc;
    } else {
        fd_ = ::open(end.path.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd_ < 0) return -errno;
        if (lseek(fd_, static_cast<off_t>(end.offset), SEEK_SET) < 0) return -errno;
        seg_bytes_ = end.offset;
    }
    if (opt_.fsync == FsyncPolicy::Interval) syncer_ = std::thread([this] { sync_loop(); });
    return 0;
}

int JournalWriter::start_segment() {
    const std::string path = opt_.dir + "/" + segment_name(next_index_);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    uint8_t hdr[kSegmentHeader] = {};
    std::memcpy(hdr, &kJournalMagic, 8);
    std::memcpy(hdr + 8, &kJournalVersion, 4);
    std::memcpy(hdr + 12, &kSegmentHeader, 4);
    std::memcpy(hdr + 16, &next_index_, 8);
    if (!write_all(fd, reinterpret_cast<const char*>(hdr), sizeof hdr)) {
        const int err = -errno;
        ::close(fd);
        unlink(path.c_str());  // (a full disk) an empty name in the way of nothing; the retry makes it again
        return err;
    }
    if (opt_.fsync != FsyncPolicy::Never) {  // the new name must survive a power loss too
        int rc = fdatasync(fd) == 0 ? 0 : -errno;
        if (rc == 0) rc = fsync_dir(opt_.dir);
        // --fsync batch promises that what is answered is on disk: a segment whose name may not
        // survive is not started (the caller holds and tries again, as on a full disk). The
        // interval policy promises less, and its sync thread reports failing syncs.
        if (rc != 0 && opt_.fsync == FsyncPolicy::Batch) {
            ::close(fd);
            unlink(path.c_str());
            return rc;
        }
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        fd_ = fd;
    }
    seg_bytes_ = kSegmentHeader;
    return 0;
}

int JournalWriter::rotate() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (fd_ >= 0) {
            if (opt_.fsync != FsyncPolicy::Never) fdatasync(fd_);
            ::close(fd_);
            fd_ = -1;
        }
    }
    return start_segment();
}

uint64_t JournalWriter::add(int32_t type, const void* payload, uint32_t len) {
    const uint32_t length = kRecordHeader + len;
    const size_t at = batch_.size();
    batch_.resize(at + aligned8(length));
    char* r = batch_.data() + at;
    const uint64_t index = next_index_++;
    const uint32_t zero = 0;
    std::memcpy(r, &length, 4);
    std::memcpy(r + 8, &index, 8);
    std::memcpy(r + 16, &type, 4);
    std::memcpy(r + 20, &zero, 4);
    if (len) std::memcpy(r + kRecordHeader, payload, len);
    std::memset(r + length, 0, aligned8(length) - length);
    const uint32_t crc = crc32c(0, r + 8, length - 8);
    std::memcpy(r + 4, &crc, 4);
    ++batch_n_;
    return index;
}

uint64_t JournalWriter::add(const InputEvent& ev) {
    int32_t type = 0;
    std::string payload;
    encode_input(ev, type, payload);
    return add(type, payload.data(), static_cast<uint32_t>(payload.size()));
}

int JournalWriter::start_batch_segment() {
    const uint64_t keep = next_index_;
    next_index_ = keep - batch_n_;
    const int rc = rotate();
    next_index_ = keep;
    return rc;
}

int JournalWriter::commit() {
    if (batch_.empty()) return 0;
    if (fd_ < 0 || seg_bytes_ >= opt_.segment_bytes) {
        // (No segment open: a rotation failed, on a full disk, and this is the retry.)
        if (const int rc = start_batch_segment(); rc != 0) return rc;
    }
    if (!write_all(fd_, batch_.data(), batch_.size())) {
        const int err = errno != 0 ? errno : EIO;
        // A full disk takes part of a batch and refuses the rest. That part is taken back and the
        // batch kept, bytes and indexes, for the caller to try again: the retry writes it whole at
        // the same offset. (Left there, the part would be a torn record in the middle of the segment
        // once anything is written behind it, which recovery takes for damage. If the truncate
        // fails, on a read-only disk, the retry overwrites the part with the same bytes.)
        const bool taken_back = ftruncate(fd_, static_cast<off_t>(seg_bytes_)) == 0;
        (void)taken_back;
        lseek(fd_, static_cast<off_t>(seg_bytes_), SEEK_SET);
        // A file size limit (RLIMIT_FSIZE, systemd's LimitFSIZE=) below --journal-segment-mb: no
        // space freed ever lets this segment grow, and a restart reopens it. The batch goes to a
        // segment of its own, once, and only if it would not be alone here too; a batch bigger
        // than the limit holds as on a full disk.
        if (err == EFBIG && seg_bytes_ > kSegmentHeader) {
            if (const int rc = start_batch_segment(); rc != 0) return rc;
            return commit();
        }
        return -err;
    }
    seg_bytes_ += batch_.size();
    bytes_written_ += batch_.size();
    batch_.clear();
    batch_n_ = 0;
    dirty_ = true;
    if (opt_.fsync == FsyncPolicy::Interval) unsynced_.store(true, std::memory_order_relaxed);
    return 0;
}

int JournalWriter::sync_before_publish() {
    if (opt_.fsync != FsyncPolicy::Batch || !dirty_) return 0;
    dirty_ = false;
    return fdatasync(fd_) == 0 ? 0 : -errno;
}

int JournalWriter::sync_now() {
    if (fdatasync(fd_) != 0) return -errno;
    dirty_ = false;
    return fsync_dir(opt_.dir);
}

void JournalWriter::sync_loop() {
    std::unique_lock<std::mutex> lock(mu_);
    bool failing = false;
    while (!stop_) {
        cv_.wait_for(lock, std::chrono::milliseconds(opt_.fsync_interval_ms));
        if (stop_) break;
        if (fd_ < 0 || !unsynced_.exchange(false, std::memory_order_relaxed)) continue;
        // A failure is said once per run of them: what was written meanwhile may not survive a
        // power loss, and the operator must hear of it (the loop goes on: this policy never
        // promised an answer was on disk).
        const bool ok = fdatasync(fd_) == 0;
        if (!ok && !failing)
            std::fprintf(stderr, "dgdo-engine: ! journal fdatasync failed: %s; what is written now may not survive a power loss\n",
                         std::strerror(errno));
        failing = !ok;
    }
}

}  // namespace dgdo
