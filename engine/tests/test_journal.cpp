// The journal's framing: records read back in order; a torn tail of the last segment is cut
// at the last good record (and only when repairing), damage anywhere else is reported and
// never cut; segments rotate and are named by their first index; pruning removes whole
// segments before the oldest snapshot kept.
#undef NDEBUG
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <filesystem>
#include <fstream>
#include <map>

#include "journal_fixture.hpp"
#include "store/crc32c.hpp"

namespace dgdo::test {
namespace {

namespace fs = std::filesystem;

struct Rec {
    uint64_t index;
    int32_t type;
    std::string payload;
};

std::vector<Rec> read_all(const StateDir& dir, uint64_t from, JournalEnd* end_out = nullptr, bool repair = false) {
    std::vector<Rec> v;
    const JournalEnd end = read_journal(
        dir.journal(), from,
        [&](uint64_t i, int32_t t, const uint8_t* p, uint32_t n) {
            v.push_back({i, t, std::string(reinterpret_cast<const char*>(p), n)});
        },
        repair);
    if (end_out) *end_out = end;
    return v;
}

// Writes `n` records of growing payloads, `per_batch` per commit; returns the writer's segment paths.
void write_records(const StateDir& dir, int n, int per_batch, uint64_t segment_bytes = 64ull << 20) {
    JournalWriter w(JournalOptions{dir.journal(), FsyncPolicy::Never, 100, segment_bytes});
    JournalEnd start;
    start.next_index = 1;
    ASSERT_EQ(w.open(start), 0);
    for (int i = 0; i < n; ++i) {
        const std::string payload(static_cast<size_t>(1 + i % 37), static_cast<char>('a' + i % 26));
        EXPECT_EQ(w.add(5, payload.data(), static_cast<uint32_t>(payload.size())), static_cast<uint64_t>(i + 1));
        if ((i + 1) % per_batch == 0) {
            ASSERT_EQ(w.commit(), 0);
        }
    }
    ASSERT_EQ(w.commit(), 0);
}

uint64_t size_of(const std::string& p) { return fs::file_size(p); }

TEST(Crc32c, MatchesTheStandardCheckValue) { EXPECT_EQ(crc32c(0, "123456789", 9), 0xE3069283u); }

TEST(Crc32c, ContinuesAcrossCalls) {
    const std::string s = "the quick brown fox jumps over the lazy dog, twice over";
    EXPECT_EQ(crc32c(crc32c(0, s.data(), 13), s.data() + 13, s.size() - 13), crc32c(0, s.data(), s.size()));
}

TEST(Journal, RecordsReadBackInOrderWithIndexTypeAndPayload) {
    TempStateDir t;
    write_records(t.dir, 100, 7);
    JournalEnd end;
    const auto v = read_all(t.dir, 1, &end);
    ASSERT_EQ(v.size(), 100u);
    for (size_t i = 0; i < v.size(); ++i) {
        EXPECT_EQ(v[i].index, i + 1);
        EXPECT_EQ(v[i].type, 5);
        EXPECT_EQ(v[i].payload.size(), 1 + i % 37);
    }
    EXPECT_FALSE(end.cut);
    EXPECT_EQ(end.next_index, 101u);
    EXPECT_EQ(end.offset, size_of(end.path));
    EXPECT_EQ(read_all(t.dir, 60).size(), 41u);  // from the middle
}

TEST(Journal, TornTailIsCutAtTheLastGoodRecordAndAppendingContinuesThere) {
    TempStateDir t;
    write_records(t.dir, 50, 10);
    const auto seg = list_segments(t.dir.journal()).at(0).path;
    const uint64_t full = size_of(seg);
    fs::resize_file(seg, full - 5);  // a write torn inside the last record
    JournalEnd end;
    EXPECT_EQ(read_all(t.dir, 1, &end, /*repair=*/false).size(), 49u);
    EXPECT_TRUE(end.cut);
    EXPECT_EQ(size_of(seg), full - 5);  // not repairing: untouched
    const auto v = read_all(t.dir, 1, &end, /*repair=*/true);
    ASSERT_EQ(v.size(), 49u);
    EXPECT_EQ(end.next_index, 50u);
    EXPECT_EQ(size_of(seg), end.offset);  // truncated at the last good record
    EXPECT_NE(end.problem.find("torn"), std::string::npos);

    {
        JournalWriter w(JournalOptions{t.dir.journal(), FsyncPolicy::Batch, 100, 64ull << 20});
        ASSERT_EQ(w.open(end), 0);
        EXPECT_EQ(w.add(6, "xy", 2), 50u);
        ASSERT_EQ(w.commit(), 0);
        EXPECT_EQ(w.sync_before_publish(), 0);
    }
    const auto after = read_all(t.dir, 1, &end);
    ASSERT_EQ(after.size(), 50u);
    EXPECT_EQ(after.back().type, 6);
    EXPECT_FALSE(end.cut);
}

// Every file of the journal directory, name -> bytes.
std::map<std::string, std::string> journal_bytes(const StateDir& dir) {
    std::map<std::string, std::string> files;
    for (const auto& e : fs::directory_iterator(dir.journal())) {
        std::ifstream f(e.path(), std::ios::binary);
        files[e.path().filename().string()].assign(std::istreambuf_iterator<char>(f), {});
    }
    return files;
}

void flip_byte(const std::string& path, uint64_t at) {
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c = 0;
    ASSERT_EQ(pread(fd, &c, 1, static_cast<off_t>(at)), 1);
    c ^= 0x40;
    ASSERT_EQ(pwrite(fd, &c, 1, static_cast<off_t>(at)), 1);
    ::close(fd);
}

// Damage, then a repairing read: it must stop at the damage, say where, and change no byte.
JournalEnd expect_damaged_untouched(const StateDir& dir, const std::string& where) {
    const auto before = journal_bytes(dir);
    JournalEnd end;
    read_all(dir, 1, &end, /*repair=*/true);
    EXPECT_TRUE(end.damaged) << end.problem;
    EXPECT_FALSE(end.cut);
    EXPECT_NE(end.problem.find(where), std::string::npos) << end.problem;
    EXPECT_EQ(journal_bytes(dir), before);  // every segment, byte for byte
    return end;
}

TEST(Journal, ACorruptRecordInAnEarlierSegmentIsDamageNothingIsCutOrRemoved) {
    TempStateDir t;
    write_records(t.dir, 400, 5, /*segment_bytes=*/2048);  // several segments
    auto segs = list_segments(t.dir.journal());
    ASSERT_GE(segs.size(), 3u);
    flip_byte(segs[1].path, kSegmentHeader + kRecordHeader);  // a payload byte of the second segment's first record
    JournalEnd end;
    const auto v = read_all(t.dir, 1, &end, /*repair=*/false);
    EXPECT_EQ(v.size(), segs[1].first - 1);  // everything before the bad record, nothing after it
    end = expect_damaged_untouched(t.dir, segs[1].path + ": bad record at byte " + std::to_string(kSegmentHeader) +
                                              " (checksum)");
    EXPECT_NE(end.problem.find("later segment(s) follow"), std::string::npos) << end.problem;
    EXPECT_EQ(list_segments(t.dir.journal()).size(), segs.size());
}

TEST(Journal, ACorruptRecordWithGoodOnesAfterItInTheLastSegmentIsDamage) {
    TempStateDir t;
    write_records(t.dir, 50, 10);
    const auto seg = list_segments(t.dir.journal()).at(0).path;
    // The third record's checksum field: the record is whole, its bytes wrong, 47 good ones follow.
    const uint64_t third = kSegmentHeader + 32 + 32;  // payloads of 1 and 2 bytes: 32 bytes each, aligned
    flip_byte(seg, third + 4);
    const JournalEnd end =
        expect_damaged_untouched(t.dir, seg + ": bad record at byte " + std::to_string(third) + " (checksum)");
    EXPECT_NE(end.problem.find("good records follow"), std::string::npos) << end.problem;
}

TEST(Journal, ACorruptLengthInTheLastSegmentIsDamageWhenGoodRecordsFollow) {
    TempStateDir t;
    write_records(t.dir, 50, 10);
    const auto seg = list_segments(t.dir.journal()).at(0).path;
    const uint64_t third = kSegmentHeader + 32 + 32;
    flip_byte(seg, third + 2);  // its length now points far past the end: reads as torn, yet records follow
    expect_damaged_untouched(t.dir, seg + ": torn record at byte " + std::to_string(third));
}

TEST(Journal, AMissingSegmentInTheMiddleIsDamageNotATailToCut) {
    TempStateDir t;
    write_records(t.dir, 400, 5, /*segment_bytes=*/2048);
    const auto segs = list_segments(t.dir.journal());
    ASSERT_GE(segs.size(), 4u);
    fs::remove(segs[1].path);
    expect_damaged_untouched(t.dir, segs[2].path + " starts at record " + std::to_string(segs[2].first) +
                                        ", expected " + std::to_string(segs[1].first));
}

TEST(Journal, ALastSegmentCutInsideItsHeaderIsATornTailAndRemoved) {
    TempStateDir t;
    write_records(t.dir, 400, 5, /*segment_bytes=*/2048);
    const auto segs = list_segments(t.dir.journal());
    ASSERT_GE(segs.size(), 2u);
    {  // a segment the writer was killed while starting: a few bytes of its header
        std::ofstream f(t.dir.journal() + "/" + segment_name(401), std::ios::binary);
        f << "DGDO";
    }
    JournalEnd end;
    EXPECT_EQ(read_all(t.dir, 1, &end, /*repair=*/true).size(), 400u);
    EXPECT_TRUE(end.cut);
    EXPECT_FALSE(end.damaged);
    EXPECT_EQ(end.next_index, 401u);
    EXPECT_EQ(list_segments(t.dir.journal()).size(), segs.size());  // the torn one gone, the rest kept
}

TEST(Journal, ZerosAfterTheLastRecordAreCutNotMisread) {
    TempStateDir t;
    write_records(t.dir, 20, 20);
    const auto seg = list_segments(t.dir.journal()).at(0).path;
    const uint64_t good = size_of(seg);
    {
        std::ofstream f(seg, std::ios::app | std::ios::binary);
        const std::string zeros(4096, '\0');
        f << zeros;
    }
    JournalEnd end;
    EXPECT_EQ(read_all(t.dir, 1, &end, true).size(), 20u);
    EXPECT_TRUE(end.cut);
    EXPECT_EQ(size_of(seg), good);
}

TEST(Journal, AStaleRecordWithTheWrongIndexEndsTheJournal) {
    TempStateDir t;
    write_records(t.dir, 10, 10);
    const auto seg = list_segments(t.dir.journal()).at(0).path;
    // Append a copy of the first record (a valid checksum, but index 1 where 11 belongs).
    std::string bytes;
    {
        std::ifstream f(seg, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(f), {});
    }
    const std::string first = bytes.substr(kSegmentHeader, 32);
    {
        std::ofstream f(seg, std::ios::app | std::ios::binary);
        f << first;
    }
    JournalEnd end;
    EXPECT_EQ(read_all(t.dir, 1, &end, false).size(), 10u);
    EXPECT_NE(end.problem.find("index"), std::string::npos);
}

TEST(Journal, SegmentsRotateAndAreNamedByTheirFirstRecord) {
    TempStateDir t;
    write_records(t.dir, 300, 3, /*segment_bytes=*/1024);
    const auto segs = list_segments(t.dir.journal());
    ASSERT_GE(segs.size(), 4u);
    EXPECT_EQ(segs[0].first, 1u);
    for (size_t i = 0; i < segs.size(); ++i) {
        JournalEnd end;
        std::vector<Rec> v = read_all(t.dir, segs[i].first, &end);
        ASSERT_FALSE(v.empty());
        EXPECT_EQ(v.front().index, segs[i].first);  // the name is the first record's index
        EXPECT_EQ(v.size(), 300 - segs[i].first + 1);
        if (i + 1 < segs.size()) {
            EXPECT_LE(size_of(segs[i].path), 1024u + 3 * 72u);  // rotated once past the size
        }
    }
}

TEST(Journal, PruningKeepsTwoSnapshotsAndTheSegmentsTheOlderOneNeeds) {
    TempStateDir t;
    write_records(t.dir, 300, 3, /*segment_bytes=*/1024);
    const auto segs = list_segments(t.dir.journal());
    ASSERT_GE(segs.size(), 5u);
    for (uint64_t index : {segs[1].first + 1, segs[2].first + 1, segs[3].first + 1})
        ASSERT_EQ(write_snapshot(t.dir.snapshots(), index, 0, "x"), 0);
    prune_state(t.dir.snapshots(), t.dir.journal());
    const auto snaps = list_snapshots(t.dir.snapshots());
    ASSERT_EQ(snaps.size(), 2u);
    EXPECT_EQ(snaps[1].index, segs[2].first + 1);
    const auto left = list_segments(t.dir.journal());
    EXPECT_EQ(left.front().first, segs[2].first);  // the older snapshot's records are all still there
    EXPECT_EQ(read_all(t.dir, snaps[1].index).size(), 300 - snaps[1].index + 1);
}

TEST(Journal, AJournalThatStartsAfterTheNeededRecordIsAGap) {
    TempStateDir t;
    write_records(t.dir, 300, 3, /*segment_bytes=*/1024);
    const auto segs = list_segments(t.dir.journal());
    fs::remove(segs[0].path);
    JournalEnd end;
    EXPECT_TRUE(read_all(t.dir, 1, &end, true).empty());
    EXPECT_TRUE(end.gap);
    EXPECT_EQ(list_segments(t.dir.journal()).size(), segs.size() - 1);  // a gap is never "repaired" away
}

TEST(Journal, EveryInputRoundTripsThroughItsJournalEncoding) {
    auto in = scripted_inputs(5, 400);
    in.push_back(Recovered{kRecoveryGap});  // made by the loop at a start, never by a sidecar
    in.push_back(Committed{1764090000123000000ull, 42});  // made by the loop after a publish
    for (const InputEvent& ev : in) {
        int32_t type = 0;
        std::string payload;
        encode_input(ev, type, payload);
        const auto back = decode_input(type, reinterpret_cast<const uint8_t*>(payload.data()),
                                       static_cast<uint32_t>(payload.size()));
        ASSERT_TRUE(back.has_value()) << type;
        int32_t type2 = 0;
        std::string payload2;
        encode_input(*back, type2, payload2);
        EXPECT_EQ(type, type2);
        EXPECT_EQ(payload, payload2);
    }
}

TEST(Journal, FsyncPoliciesParseAndNameThemselves) {
    for (auto p : {FsyncPolicy::Never, FsyncPolicy::Interval, FsyncPolicy::Batch}) EXPECT_EQ(parse_fsync(to_string(p)), p);
    EXPECT_FALSE(parse_fsync("sometimes"));
}

TEST(Journal, IntervalPolicyWriterWritesAReadableJournal) {
    TempStateDir t;
    {
        JournalWriter w(JournalOptions{t.dir.journal(), FsyncPolicy::Interval, 1, 64ull << 20});
        JournalEnd start;
        start.next_index = 1;
        ASSERT_EQ(w.open(start), 0);
        for (int i = 0; i < 50; ++i) {
            w.add(JOURNAL_TICK, &i, 4);
            ASSERT_EQ(w.commit(), 0);
        }
    }
    EXPECT_EQ(read_all(t.dir, 1).size(), 50u);
}

// A journal of 10 records in one segment (`before` bytes, ending at `end`), and a writer that continues it.
struct TenRecords {
    TempStateDir t;
    JournalEnd end;
    uint64_t before = 0;
    JournalWriter w{JournalOptions{t.dir.journal(), FsyncPolicy::Never, 100, 64ull << 20}};
    TenRecords() {
        write_records(t.dir, 10, 10);
        EXPECT_EQ(read_all(t.dir, 1, &end).size(), 10u);
        before = size_of(end.path);
        EXPECT_EQ(w.open(end), 0);
    }
};

// w.commit() with the file size limit (RLIMIT_FSIZE) at `limit` bytes, and SIGXFSZ ignored (EFBIG
// instead of the signal), both restored after.
int commit_under_file_size_limit(JournalWriter& w, rlim_t limit) {
    struct rlimit old{};
    EXPECT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    const auto prev = signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old;
    small.rlim_cur = limit;
    EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    const int rc = w.commit();
    EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    return rc;
}

// A disk that takes part of a batch and refuses the rest (here the file size limit, EFBIG, as a
// full disk gives ENOSPC; the batch is bigger than the limit, so the new segment EFBIG moves it to
// refuses it as well): the part is taken back and the batch kept, so the loop can hold and try
// again; the retry writes it whole, at the same place, with the same indexes.
TEST(Journal, ABatchTheDiskTookOnlyPartOfIsTakenBackAndWrittenWholeByTheRetry) {
    TenRecords j;
    auto& [t, end, before, w] = j;
    const std::string payload(200, 'p');
    for (int i = 0; i < 20; ++i) w.add(7, payload.data(), static_cast<uint32_t>(payload.size()));

    const int failed = commit_under_file_size_limit(w, before + 1000);  // room for some of the 20, not all
    const uint64_t after_failure = size_of(end.path);

    EXPECT_EQ(failed, -EFBIG);
    EXPECT_EQ(after_failure, before);  // the part it took is taken back
    EXPECT_EQ(w.batch_records(), 20u);  // and the batch kept
    EXPECT_EQ(w.add(8, "z", 1), 31u);  // what comes meanwhile goes behind it
    ASSERT_EQ(w.commit(), 0);
    const auto v = read_all(t.dir, 1, &end);
    ASSERT_EQ(v.size(), 31u);  // no gap, no torn record in the middle: every index once, in order
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i].index, i + 1);
    EXPECT_EQ(v[10].payload, payload);
    EXPECT_EQ(v[30].type, 8);
    EXPECT_FALSE(end.cut);
}

// A file size limit (LimitFSIZE=) below the segment size: the segment reaches it, and no space freed
// lets it grow. The batch goes to a new segment, named after its first index, instead of holding
// the engine for good (and again after each restart, which reopened the same segment).
TEST(Journal, ABatchPastTheFileSizeLimitGoesToANewSegment) {
    TenRecords j;
    auto& [t, end, before, w] = j;
    const std::string payload(100, 'p');
    for (int i = 0; i < 4; ++i) w.add(7, payload.data(), static_cast<uint32_t>(payload.size()));

    // The 4 records (512 bytes) fit a new segment, not behind the 10.
    const int rc = commit_under_file_size_limit(w, before + 500);

    EXPECT_EQ(rc, 0);
    EXPECT_EQ(size_of(end.path), before);  // the full segment as it was
    EXPECT_EQ(w.batch_records(), 0u);
    const auto v = read_all(t.dir, 1, &end);
    ASSERT_EQ(v.size(), 14u);
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i].index, i + 1);
    EXPECT_EQ(end.path, t.dir.journal() + "/" + segment_name(11));
    EXPECT_FALSE(end.cut);
}

// A new segment that cannot be started (a full disk refuses even its header; here a file size
// limit below it): nothing is written and the batch is kept; the retry starts the segment, named
// after the batch's first index, and writes the batch whole.
TEST(Journal, ASegmentThatCannotBeStartedIsStartedByTheRetry) {
    TenRecords j;
    auto& [t, end, before, w] = j;
    const std::string payload(100, 'p');
    for (int i = 0; i < 3; ++i) w.add(7, payload.data(), static_cast<uint32_t>(payload.size()));

    // Below a segment's header: the full segment refuses the batch, the new one its header.
    const int failed = commit_under_file_size_limit(w, 16);

    EXPECT_EQ(failed, -EFBIG);
    EXPECT_EQ(w.batch_records(), 3u);  // kept
    EXPECT_EQ(list_segments(t.dir.journal()).size(), 1u);  // no empty segment left in the way
    ASSERT_EQ(w.commit(), 0);
    const auto v = read_all(t.dir, 1, &end);
    ASSERT_EQ(v.size(), 13u);
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i].index, i + 1);
    EXPECT_EQ(end.path, t.dir.journal() + "/" + segment_name(11));
    EXPECT_FALSE(end.cut);
}

}  // namespace
}  // namespace dgdo::test
