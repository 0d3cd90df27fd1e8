// Recovery from snapshot + journal: the state after a restart equals the state before it
// (digest), replay reproduces the live outputs byte for byte, ids are never reused, and a
// bad snapshot falls back to the one before it.
#undef NDEBUG
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "journal_fixture.hpp"
#include "loop/persistence.hpp"
#include "store/crc32c.hpp"

namespace dgdo::test {
namespace {

namespace fs = std::filesystem;

std::vector<std::vector<OutRecord>> replay_outputs(const StateDir& dir, uint64_t* digest = nullptr) {
    std::vector<std::vector<OutRecord>> outs;
    const ReplayFn each = [&](uint64_t, int32_t, const uint8_t*, uint32_t, const InputEvent&,
                              const std::vector<OutRecord>& out) { outs.push_back(out); };
    RecoverOptions o;
    o.repair = false;
    o.each = &each;
    Core core;
    const Recovery r = recover(core, Config{}, dir, o);
    EXPECT_TRUE(r.ok);
    if (digest) *digest = r.digest;
    return outs;
}

void expect_same(const std::vector<std::vector<OutRecord>>& a, const std::vector<std::vector<OutRecord>>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].size(), b[i].size()) << "input " << i;
        for (size_t k = 0; k < a[i].size(); ++k) {
            ASSERT_EQ(a[i][k].type, b[i][k].type) << "input " << i;
            ASSERT_EQ(a[i][k].body, b[i][k].body) << "input " << i;
        }
    }
}

TEST(CoreState, SaveLoadSaveGivesTheSameBytes) {
    Core live;
    for (const auto& ev : scripted_inputs(11, 3000)) {
        std::vector<OutRecord> out;
        live.apply(ev, out);
    }
    std::string a, b;
    live.save(a);
    Core loaded;
    ASSERT_TRUE(loaded.load(reinterpret_cast<const uint8_t*>(a.data()), a.size()));
    loaded.save(b);
    EXPECT_EQ(a, b);
    EXPECT_EQ(live.digest(), loaded.digest());
    EXPECT_GT(live.order_count(), 10u);
}

TEST(CoreState, AVersion1StateStillLoadsAndTheCoreCarriesOnAsOneThatNeverStopped) {
    // tests/data/core_state_v1.bin: Core::save() of the version-1 engine (817d33d) after the
    // first 401 of scripted_inputs(5, 600) (every session without opened_ns).
    std::ifstream f(DGDO_TEST_DATA "/core_state_v1.bin", std::ios::binary);
    const std::string v1((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ASSERT_GT(v1.size(), 1000u);
    const auto in = scripted_inputs(5, 600);
    const size_t cut = scripted_inputs(5, 400).size();
    Core live, loaded;
    ASSERT_TRUE(loaded.load(reinterpret_cast<const uint8_t*>(v1.data()), v1.size()));
    for (size_t i = 0; i < cut; ++i) {
        std::vector<OutRecord> out;
        live.apply(in[i], out);
    }
    EXPECT_EQ(loaded.order_count(), live.order_count());
    // Its deliveries (format 1: no base, no floor) load as the current engine keeps them: each
    // recipient's base is the seq before its history, so a resume answers as it always did.
    EXPECT_TRUE(loaded.deliveries() == live.deliveries());
    ASSERT_GT(live.deliveries().held_total(), 0u);
    for (size_t i = cut; i < in.size(); ++i) {  // the same outputs from here on, byte for byte
        std::vector<OutRecord> a, b;
        live.apply(in[i], a);
        loaded.apply(in[i], b);
        expect_same({a}, {b});
    }
    std::string v2, again;  // and it saves as the current version, which loads back the same
    loaded.save(v2);
    Core reloaded;
    ASSERT_TRUE(reloaded.load(reinterpret_cast<const uint8_t*>(v2.data()), v2.size()));
    reloaded.save(again);
    EXPECT_EQ(v2, again);
}

TEST(CoreState, LoadRejectsTruncatedOrGarbledBytesAndAUsedCore) {
    Core live;
    for (const auto& ev : scripted_inputs(12, 500)) {
        std::vector<OutRecord> out;
        live.apply(ev, out);
    }
    std::string a;
    live.save(a);
    for (size_t cut : {size_t{0}, size_t{7}, a.size() / 2, a.size() - 1}) {
        Core c;
        EXPECT_FALSE(c.load(reinterpret_cast<const uint8_t*>(a.data()), cut)) << cut;
    }
    std::string extra = a + "z";
    Core c1;
    EXPECT_FALSE(c1.load(reinterpret_cast<const uint8_t*>(extra.data()), extra.size()));
    EXPECT_FALSE(live.load(reinterpret_cast<const uint8_t*>(a.data()), a.size()));  // not a fresh core
}

TEST(Recovery, SnapshotPlusTailEqualsFullReplayAndTheLiveState) {
    TempStateDir t;
    const auto in = scripted_inputs(21, 4000);
    Recorder rec(t.dir);
    rec.run(in, 0, 2500);
    rec.snapshot(t.dir);
    rec.run(in, 2500, in.size());
    const uint64_t live = rec.core.digest();

    Core a;
    const Recovery ra = recover(a, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr});
    ASSERT_TRUE(ra.ok);
    EXPECT_FALSE(ra.snapshot.empty());
    EXPECT_EQ(ra.replayed, in.size() - 2500);
    EXPECT_EQ(ra.digest, live);

    for (const auto& s : list_snapshots(t.dir.snapshots())) fs::remove(s.path);
    Core b;
    const Recovery rb = recover(b, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr});
    EXPECT_TRUE(rb.snapshot.empty());
    EXPECT_EQ(rb.replayed, in.size());
    EXPECT_EQ(rb.digest, live);
}

TEST(Recovery, ARecordedSessionReplayedTwiceGivesTheLiveOutputsByteForByte) {
    TempStateDir t;
    const auto in = scripted_inputs(31, 3000);
    Recorder rec(t.dir);
    rec.run(in, 0, in.size());
    uint64_t d1 = 0, d2 = 0;
    const auto first = replay_outputs(t.dir, &d1);
    const auto second = replay_outputs(t.dir, &d2);
    expect_same(first, second);
    expect_same(first, rec.outputs);
    EXPECT_EQ(d1, d2);
    size_t offers = 0;
    for (const auto& o : first) offers += of_type(o, DGDO_OUT_NEW_ORDER).size();
    EXPECT_GT(offers, 30u);  // the session really dispatched
}

// An operator's cancel is an input like any other: journaled, and replayed to the same outputs and
// state. The scripted day with an admin's order_cancel every 25 inputs, on orders in every state.
TEST(Recovery, OperatorCancelsReplayToTheLiveOutputsAndDigest) {
    TempStateDir t;
    const auto day = scripted_inputs(43, 3000);
    Harness builder;  // only for its input builder
    std::vector<InputEvent> in;
    for (size_t i = 0; i < day.size(); ++i) {
        in.push_back(day[i]);
        if (i % 25 != 24) continue;
        dgdo_in_order_command e{};
        e.meta = builder.meta(DGDO_ROLE_ADMIN, "ops");
        e.order_id = 1001 + (i / 25) % 70;
        e.command = DGDO_CMD_CANCEL;
        in.push_back(e);
    }
    Recorder rec(t.dir);
    rec.run(in, 0, 1500);
    rec.snapshot(t.dir);
    rec.run(in, 1500, in.size());
    size_t ended = 0;
    for (const auto& out : rec.outputs)
        for (const auto& r : of_type(out, DGDO_OUT_ORDER_UPDATE))
            ended += as<dgdo_out_order_update>(r).reason == DGDO_REASON_OPERATOR_CANCELED;
    EXPECT_GT(ended, 10u);  // the operator really ended orders

    Core from_snapshot;
    const Recovery r = recover(from_snapshot, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr});
    ASSERT_TRUE(r.ok);
    EXPECT_FALSE(r.snapshot.empty());
    EXPECT_EQ(r.digest, rec.core.digest());

    for (const auto& s : list_snapshots(t.dir.snapshots())) fs::remove(s.path);
    uint64_t digest = 0;
    expect_same(replay_outputs(t.dir, &digest), rec.outputs);
    EXPECT_EQ(digest, rec.core.digest());
}

// Records `in` with a snapshot taken after the first `a` inputs and another after the first `b`.
void record_with_snapshots_at(Recorder& rec, const StateDir& dir, const std::vector<InputEvent>& in, size_t a,
                              size_t b) {
    rec.run(in, 0, a);
    rec.snapshot(dir);
    rec.run(in, a, b);
    rec.snapshot(dir);
    rec.run(in, b, in.size());
}

TEST(Recovery, FallsBackToTheOlderSnapshotWhenTheNewestIsCorrupt) {
    TempStateDir t;
    const auto in = scripted_inputs(41, 3000);
    Recorder rec(t.dir);
    record_with_snapshots_at(rec, t.dir, in, 1000, 2000);
    const auto snaps = list_snapshots(t.dir.snapshots());
    ASSERT_EQ(snaps.size(), 2u);
    {
        const int fd = ::open(snaps[0].path.c_str(), O_RDWR);
        char c = 0;
        ASSERT_EQ(pread(fd, &c, 1, kSnapshotHeader + 100), 1);
        c ^= 1;
        ASSERT_EQ(pwrite(fd, &c, 1, kSnapshotHeader + 100), 1);
        ::close(fd);
    }
    Core core;
    const Recovery r = recover(core, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr});
    ASSERT_EQ(r.rejected.size(), 1u);
    EXPECT_NE(r.rejected[0].find("checksum"), std::string::npos);
    EXPECT_EQ(r.snapshot, snaps[1].path);
    EXPECT_EQ(r.replayed, in.size() - 1000);
    EXPECT_EQ(r.digest, rec.core.digest());
}

// What a rollback meets: state a newer engine wrote. Not damage: the engine refuses to start and
// changes nothing (no tail cut, no snapshot passed over), so running the newer version again loses nothing.
std::vector<std::pair<std::string, std::uintmax_t>> files_and_sizes(const StateDir& dir) {
    std::vector<std::pair<std::string, std::uintmax_t>> out;
    for (const auto& e : fs::recursive_directory_iterator(dir.root))
        if (e.is_regular_file()) out.emplace_back(e.path().string(), e.file_size());
    std::sort(out.begin(), out.end());
    return out;
}

void write_u32(const std::string& path, off_t at, uint32_t v) {
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, &v, sizeof v, at), static_cast<ssize_t>(sizeof v));
    ::close(fd);
}

// Met with a newer format, recovery refuses to start and changes nothing (even with repair on).
Recovery expect_refused_untouched(const TempStateDir& t, const std::string& problem) {
    const auto before = files_and_sizes(t.dir);
    Core core;
    const Recovery r = recover(core, Config{}, t.dir);
    EXPECT_FALSE(r.ok);
    EXPECT_TRUE(r.end.newer);
    EXPECT_NE(r.end.problem.find(problem), std::string::npos) << r.end.problem;
    EXPECT_EQ(files_and_sizes(t.dir), before);
    return r;
}

TEST(Recovery, AJournalSegmentOfANewerFormatIsRefusedAndLeftWhole) {
    TempStateDir t;
    const auto in = scripted_inputs(61, 1500);
    Recorder rec(t.dir);
    rec.run(in, 0, in.size());
    const auto seg = list_segments(t.dir.journal()).back().path;
    write_u32(seg, 8, kJournalVersion + 1);  // the segment header's version
    EXPECT_FALSE(expect_refused_untouched(t, "newer than this engine's").end.cut);
}

// A segment whose header is garbled (its magic: not a journal segment of any version) but whose
// records follow it is damage, not a newer format and not a torn tail: refused, every byte kept.
TEST(Recovery, AJournalSegmentWithAGarbledHeaderIsRefusedAndLeftWhole) {
    TempStateDir t;
    const auto in = scripted_inputs(62, 1500);
    Recorder rec(t.dir);
    rec.run(in, 0, in.size());
    const auto seg = list_segments(t.dir.journal()).back().path;
    write_u32(seg, 0, 0xdeadbeef);  // the first half of the magic
    const auto before = files_and_sizes(t.dir);
    Core core;
    const Recovery r = recover(core, Config{}, t.dir);
    EXPECT_FALSE(r.ok);
    EXPECT_FALSE(r.end.newer);
    EXPECT_FALSE(r.end.cut);
    EXPECT_FALSE(r.end.problem.empty());
    EXPECT_EQ(files_and_sizes(t.dir), before);
}

// Sets a snapshot file's format version, with a header checksum that still holds.
void set_snapshot_version(const std::string& path, uint32_t version) {
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint8_t h[kSnapshotHeader];
    ASSERT_EQ(pread(fd, h, sizeof h, 0), static_cast<ssize_t>(sizeof h));
    std::memcpy(h + 8, &version, 4);
    const uint32_t crc = crc32c(0, h, 60);
    std::memcpy(h + 60, &crc, 4);
    ASSERT_EQ(pwrite(fd, h, sizeof h, 0), static_cast<ssize_t>(sizeof h));
    ::close(fd);
}

TEST(Recovery, ASnapshotOfAnOlderFormatIsReadNotRefused) {
    // Version 1 files differ only inside the payload (Core::load reads both: CoreState tests).
    TempStateDir t;
    const auto in = scripted_inputs(72, 1500);
    Recorder rec(t.dir);
    record_with_snapshots_at(rec, t.dir, in, 700, 1000);
    const auto snaps = list_snapshots(t.dir.snapshots());
    ASSERT_FALSE(snaps.empty());
    set_snapshot_version(snaps[0].path, 1);
    const SnapshotRead got = read_snapshot(snaps[0].path);
    EXPECT_EQ(got.problem, "");
    EXPECT_FALSE(got.payload.empty());
    Core core;
    const Recovery r = recover(core, Config{}, t.dir);
    EXPECT_TRUE(r.ok);
    EXPECT_EQ(r.snapshot, snaps[0].path);
    EXPECT_EQ(r.digest, rec.core.digest());
}

TEST(Recovery, ASnapshotOfANewerFormatIsRefusedNotPassedOver) {
    TempStateDir t;
    const auto in = scripted_inputs(71, 2000);
    Recorder rec(t.dir);
    record_with_snapshots_at(rec, t.dir, in, 1000, 1500);
    const auto snaps = list_snapshots(t.dir.snapshots());
    ASSERT_EQ(snaps.size(), 2u);
    set_snapshot_version(snaps[0].path, kSnapshotVersion + 1);  // the newest
    EXPECT_TRUE(expect_refused_untouched(t, "snapshot format").rejected.empty());  // not "passed over" for the older one
}

TEST(Recovery, ATornLastBatchRecoversTheStateBeforeIt) {
    TempStateDir t;
    const auto in = scripted_inputs(51, 1500);
    Recorder rec(t.dir);
    rec.run(in, 0, in.size());
    const auto seg = list_segments(t.dir.journal()).back().path;
    fs::resize_file(seg, fs::file_size(seg) - 3);  // the last record is torn
    Core core;
    const Recovery r = recover(core, Config{}, t.dir);  // repairs
    EXPECT_TRUE(r.end.cut);
    EXPECT_EQ(r.replayed, in.size() - 1);
    Core reference;
    for (size_t i = 0; i + 1 < in.size(); ++i) {
        std::vector<OutRecord> out;
        reference.apply(in[i], out);
    }
    EXPECT_EQ(r.digest, reference.digest());
}

TEST(Recovery, OrderIdsSurviveARestartAndAreNeverReused) {
    TempStateDir t;
    Recorder rec(t.dir);
    Harness h;  // input builders
    std::vector<InputEvent> in{Tick{h.now}};
    for (int i = 0; i < 5; ++i) {
        dgdo_in_ride_request e{};
        e.meta = h.meta(DGDO_ROLE_PASSENGER, "p" + std::to_string(i));
        e.pickup = kCenter;
        e.dropoff = at(3000, 0);
        in.push_back(e);
    }
    rec.run(in, 0, in.size());
    std::set<uint64_t> before;
    for (const auto& out : rec.outputs)
        for (const auto& r : of_type(out, DGDO_OUT_COMMAND_RESULT)) before.insert(as<dgdo_out_command_result>(r).order_id);
    ASSERT_EQ(before.size(), 5u);

    Core core;
    ASSERT_TRUE(recover(core, Config{}, t.dir).ok);
    for (uint64_t id : before) ASSERT_NE(core.find_order(id), nullptr) << id;
    dgdo_in_ride_request e{};
    e.meta = h.meta(DGDO_ROLE_PASSENGER, "p-new");
    e.pickup = kCenter;
    e.dropoff = at(3000, 0);
    std::vector<OutRecord> out;
    core.apply(e, out);
    const uint64_t fresh = as<dgdo_out_command_result>(out.at(0)).order_id;
    EXPECT_GT(fresh, *before.rbegin());
    EXPECT_EQ(core.find_order(fresh)->passenger, "p-new");
}

// The spatial index is rebuilt from a snapshot in driver-creation order, not in the order the
// drivers came and went: its answers must not depend on that history.
TEST(Recovery, GridIndexAnswersDoNotDependOnInsertionHistory) {
    std::mt19937 rng(3);
    std::vector<std::pair<std::string, dgdo_point>> drivers;
    for (int i = 0; i < 400; ++i) {
        // A lattice, so many drivers are exactly equidistant from lattice queries.
        drivers.emplace_back("d" + std::to_string(i), at(100.0 * (i % 20) - 1000, 100.0 * (i / 20) - 1000));
    }
    GridIndex a, b;
    for (const auto& [id, p] : drivers) a.upsert(id, p);
    auto shuffled = drivers;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    for (const auto& [id, p] : shuffled) {
        b.upsert(id, at(5000, 5000));  // somewhere else first, and some leave and come back
        if (rng() % 3 == 0) b.erase(id);
    }
    for (const auto& [id, p] : shuffled) b.upsert(id, p);
    for (int q = 0; q < 200; ++q) {
        const dgdo_point c = at(100.0 * (q % 20) - 1050, 100.0 * (q / 10 % 20) - 1000);
        for (size_t k : {size_t{1}, size_t{2}, size_t{5}}) {
            const Eligible odd = [](const std::string& id) { return id.back() % 2 == 1; };
            for (const Eligible* e : {static_cast<const Eligible*>(nullptr), &odd}) {
                const auto ra = a.nearest_k(c, 3000, k, e ? *e : Eligible{});
                const auto rb = b.nearest_k(c, 3000, k, e ? *e : Eligible{});
                ASSERT_EQ(ra.size(), rb.size());
                for (size_t i = 0; i < ra.size(); ++i) EXPECT_EQ(ra[i].id, rb[i].id) << q << " k=" << k;
            }
        }
    }
}

TEST(Recovery, WorkersWithOpenSessionsAreListedForTheirDetach) {
    Harness h;
    h.session(true, DGDO_ROLE_DRIVER, "d1", 3, 1);
    h.session(true, DGDO_ROLE_PASSENGER, "p1", 2, 1);
    h.session(true, DGDO_ROLE_PASSENGER, "p2", 3, 2);
    h.session(false, DGDO_ROLE_PASSENGER, "p1", 2, 1);
    EXPECT_EQ(h.core.workers_with_open_sessions(), (std::vector<uint16_t>{3}));
}

// Seq numbers and the resume history are core state like any other: after a recovery each
// recipient numbers on from where it was, and a resume from an older seq replays the very bytes
// the live engine would have replayed.
TEST(Recovery, SeqAndHistorySurviveARestart) {
    TempStateDir t;
    const auto in = scripted_inputs(41, 3000);
    Recorder rec(t.dir);
    rec.run(in, 0, 1500);
    rec.snapshot(t.dir);
    rec.run(in, 1500, in.size());

    // The passenger who got the most reliable messages.
    std::string who;
    std::vector<uint64_t> seqs;
    for (int i = 0; i < 20; ++i) {
        const std::string p = "p" + std::to_string(i);
        std::vector<uint64_t> s;
        for (const auto& out : rec.outputs)
            for (uint64_t q : seqs_to(out, DGDO_ROLE_PASSENGER, p)) s.push_back(q);
        if (s.size() > seqs.size()) who = p, seqs = s;
    }
    ASSERT_GE(seqs.size(), 3u);
    for (size_t i = 1; i < seqs.size(); ++i) ASSERT_EQ(seqs[i], seqs[i - 1] + 1) << who;

    Core back;
    ASSERT_TRUE(recover(back, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr}).ok);
    ASSERT_EQ(back.digest(), rec.core.digest());

    // The same inputs to the live core and the recovered one give the same bytes: a resume from
    // two messages back (replayed with their original seqs), then a new ride (numbered on).
    Harness h;
    dgdo_in_session open{};
    open.meta = h.meta(DGDO_ROLE_PASSENGER, who, 1, 99);
    open.flags = DGDO_SESSION_HAS_LAST_SEQ;
    open.last_seq = seqs.back() - 2;
    dgdo_in_ride_request ride{};
    ride.meta = h.meta(DGDO_ROLE_PASSENGER, who, 1, 99);
    ride.idem_key = 424242;
    ride.pickup = at(10, 10);
    ride.dropoff = at(3000, 3000);
    for (const InputEvent& ev : {InputEvent{SessionOpen{open}}, InputEvent{ride}}) {
        std::vector<OutRecord> live, recovered;
        rec.core.apply(ev, live);
        back.apply(ev, recovered);
        expect_same({live}, {recovered});
        if (std::holds_alternative<SessionOpen>(ev)) {
            const auto st = session_state(recovered);
            EXPECT_EQ(st.resumed, 1);
            EXPECT_EQ(st.seq, seqs.back());
            EXPECT_EQ(seqs_to(recovered, DGDO_ROLE_PASSENGER, who),
                      (std::vector<uint64_t>{seqs.back() - 1, seqs.back()}));
        } else {
            const auto next = seqs_to(recovered, DGDO_ROLE_PASSENGER, who);
            ASSERT_FALSE(next.empty());
            EXPECT_EQ(next.front(), seqs.back() + 1);
        }
    }
}


// A bad record with committed records after it is not a crash's torn write: the engine must not
// start on the records before it (and cut the rest away), nor touch a byte; it refuses (-EIO).
TEST(Persistence, AJournalDamagedBeforeItsEndIsRefusedAndEveryByteKept) {
    TempStateDir t;
    const auto in = scripted_inputs(71, 1500);
    {
        Recorder rec(t.dir, /*segment_bytes=*/8192);
        rec.run(in, 0, in.size());
    }
    const auto segs = list_segments(t.dir.journal());
    ASSERT_GE(segs.size(), 4u);
    const auto read = [](const std::string& path) {
        std::ifstream f(path, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(f), {});
    };
    const std::string damaged = segs[segs.size() / 2].path;
    uint64_t at = kSegmentHeader;  // the first record past the middle of a segment in the middle
    for (const std::string bytes = read(damaged); at < bytes.size() / 2;) {
        uint32_t length = 0;
        std::memcpy(&length, bytes.data() + at, 4);
        at += (length + 7u) & ~7u;
    }
    {  // one flipped bit in its type: its checksum fails
        std::fstream f(damaged, std::ios::in | std::ios::out | std::ios::binary);
        f.seekg(static_cast<std::streamoff>(at + 16));
        char c = 0;
        f.get(c);
        f.seekp(static_cast<std::streamoff>(at + 16));
        f.put(static_cast<char>(c ^ 1));
    }
    std::vector<std::string> before;
    for (const auto& s : segs) before.push_back(read(s.path));
    PersistOptions o = t.options(FsyncPolicy::Never);
    {
        Persistence p(o);
        Core core;
        EXPECT_EQ(p.start(core, Config{}, 1'000'000'000), -EIO);
    }
    const auto after = list_segments(t.dir.journal());
    ASSERT_EQ(after.size(), segs.size());
    for (size_t i = 0; i < segs.size(); ++i) EXPECT_EQ(read(after[i].path), before[i]) << after[i].path;
}

// Under FsyncPolicy::Batch a batch's outputs (acks among them) go out only once it is on disk:
// a disk that fails the fdatasync must stop them, not just be logged. The journal's descriptor
// is pointed at /dev/null: its writes succeed and its fdatasync fails (EINVAL), as a failing
// disk's would (EIO).
TEST(Persistence, UnderBatchABatchTheDiskCouldNotSyncIsNotToBePublished) {
    TempStateDir t;
    PersistOptions o = t.options(FsyncPolicy::Batch);
    Persistence p(o);
    Core core;
    ASSERT_EQ(p.start(core, Config{}, 1'000'000'000), 0);
    p.add(InputEvent{Tick{2'000'000'000}});
    ASSERT_EQ(p.commit(), 0);
    EXPECT_TRUE(p.before_publish());  // a real file: synced

    int journal_fd = -1;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        const auto target = std::filesystem::read_symlink(e.path(), ec);
        if (!ec && target.string().starts_with(t.dir.journal() + "/") && target.string().ends_with(".dgj"))
            journal_fd = std::stoi(e.path().filename().string());
    }
    ASSERT_GE(journal_fd, 0);
    const int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    ASSERT_GE(null_fd, 0);
    ASSERT_EQ(dup2(null_fd, journal_fd), journal_fd);
    ::close(null_fd);
    p.add(InputEvent{Tick{3'000'000'000}});
    ASSERT_EQ(p.commit(), 0);
    EXPECT_FALSE(p.before_publish());
}


// A kill -9 while the snapshot child writes (it dies with the engine: PR_SET_PDEATHSIG) leaves
// its temp file, never renamed; the next snapshot has another index, so nothing else removes it.
TEST(Persistence, ASnapshotLeftHalfWrittenByAKilledEngineIsRemovedAtTheNextStart) {
    TempStateDir t;
    const std::string stale = t.dir.snapshots() + "/00000000000000000005.snap.tmp";
    std::ofstream(stale) << "half a snapshot";
    ASSERT_TRUE(std::filesystem::exists(stale));
    PersistOptions o = t.options(FsyncPolicy::Never);
    Persistence p(o);
    Core core;
    ASSERT_EQ(p.start(core, Config{}, 1'000'000'000), 0);
    EXPECT_FALSE(std::filesystem::exists(stale));
}

// The ride requests of passengers p<first>..p<first+n-1>, at the pickup.
std::vector<InputEvent> rides(Harness& h, int first, int n) {
    std::vector<InputEvent> in;
    for (int i = first; i < first + n; ++i) {
        dgdo_in_ride_request e{};
        e.meta = h.meta(DGDO_ROLE_PASSENGER, "p" + std::to_string(i));
        e.pickup = kCenter;
        e.dropoff = at(3000, 0);
        in.push_back(e);
    }
    return in;
}

std::set<uint64_t> order_ids(const std::vector<std::vector<OutRecord>>& outputs) {
    std::set<uint64_t> ids;
    for (const auto& out : outputs)
        for (const auto& r : of_type(out, DGDO_OUT_COMMAND_RESULT)) ids.insert(as<dgdo_out_command_result>(r).order_id);
    return ids;
}

// The records of a journal, as (type, payload).
std::vector<std::pair<int32_t, std::string>> journal_records(const StateDir& dir) {
    std::vector<std::pair<int32_t, std::string>> recs;
    read_journal(
        dir.journal(), 1,
        [&](uint64_t, int32_t type, const uint8_t* payload, uint32_t len) {
            recs.emplace_back(type, std::string(reinterpret_cast<const char*>(payload), len));
        },
        false);
    return recs;
}

// A power loss under --fsync interval or never: the journal's last records never reached the
// disk, with the order ids (and seqs) the engine had handed out for them. The restarted engine
// jumps past them, journals the jump and syncs it before anything goes out.
TEST(Persistence, AfterALostJournalTailNoOrderIdIsHandedOutAgain) {
    TempStateDir t;
    Harness h;  // input builders
    std::set<uint64_t> handed_out;
    uint64_t kept_bytes = 0;
    {
        Recorder rec(t.dir);
        std::vector<InputEvent> in{Tick{h.now}};
        const auto first = rides(h, 0, 5);
        in.insert(in.end(), first.begin(), first.end());
        rec.run(in, 0, in.size());
        kept_bytes = fs::file_size(list_segments(t.dir.journal()).back().path);
        const auto lost = rides(h, 5, 4);  // written, never synced: gone with the power
        rec.run(lost, 0, lost.size());
        handed_out = order_ids(rec.outputs);
        ASSERT_EQ(handed_out.size(), 9u);
    }
    fs::resize_file(list_segments(t.dir.journal()).back().path, kept_bytes);

    PersistOptions o = t.options(FsyncPolicy::Never);  // the jump is synced whatever the policy
    Core core;
    {
        Persistence p(o);
        ASSERT_EQ(p.start(core, Config{}, 1'000'000'000), 0);
    }
    EXPECT_EQ(core.order_count(), 5u);
    const auto recs = journal_records(t.dir);
    ASSERT_FALSE(recs.empty());
    EXPECT_EQ(recs.back().first, JOURNAL_RECOVERED);  // the input that made the jump
    uint64_t gap = 0;
    ASSERT_EQ(recs.back().second.size(), sizeof gap);
    std::memcpy(&gap, recs.back().second.data(), sizeof gap);
    EXPECT_EQ(gap, kRecoveryGap);

    std::vector<OutRecord> out;
    core.apply(rides(h, 100, 1).front(), out);
    const uint64_t fresh = as<dgdo_out_command_result>(out.at(0)).order_id;
    EXPECT_GT(fresh, *handed_out.rbegin());
    EXPECT_EQ(handed_out.count(fresh), 0u);

    // Replaying the journal (the next start, `dgdo replay`) jumps where the live engine did.
    Core again;
    const Recovery r = recover(again, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr});
    ASSERT_TRUE(r.ok);
    Core live;
    {
        Persistence p(o);  // (a second start jumps again: compare the state before this one's jump)
        ASSERT_EQ(p.start(live, Config{}, 1'000'000'000), 0);
    }
    EXPECT_EQ(live.next_order_id(), again.next_order_id() + kRecoveryGap);
    EXPECT_EQ(again.next_order_id(), fresh);
}

// A command the journal holds, sent again by a sidecar's salvage, is recognised for a while after
// the start; an engine that held on a refused journal write at its start (a full disk) read its
// rings only when the hold ended, so the while starts again then (recent_from).
TEST(Persistence, ASalvagedCommandIsRecognisedForAWhileAfterTheRingsAreReadAgain) {
    TempStateDir t;
    Harness h;
    {
        Recorder rec(t.dir);
        std::vector<InputEvent> in{Tick{h.now}};
        const auto r = rides(h, 0, 2);
        in.insert(in.end(), r.begin(), r.end());
        rec.run(in, 0, in.size());
    }
    std::vector<std::string> commands;
    for (const auto& [type, payload] : journal_records(t.dir))
        if (type == DGDO_IN_RIDE_REQUEST) commands.push_back(payload);
    ASSERT_EQ(commands.size(), 2u);
    const auto bytes = [](const std::string& p) { return reinterpret_cast<const uint8_t*>(p.data()); };
    const uint64_t t0 = 1'000'000'000, minute = 60'000'000'000;

    PersistOptions o = t.options(FsyncPolicy::Never);
    Persistence p(o);
    Core core;
    ASSERT_EQ(p.start(core, Config{}, t0), 0);
    p.recent_from(t0 + minute);  // held a minute
    std::vector<OutRecord> answers;
    EXPECT_TRUE(p.already_journaled(DGDO_IN_RIDE_REQUEST, bytes(commands[0]), static_cast<uint32_t>(commands[0].size()),
                                    t0 + minute + minute / 2, answers));
    ASSERT_EQ(answers.size(), 1u);  // its answer, as the replay made it
    EXPECT_EQ(answers[0].type, DGDO_OUT_COMMAND_RESULT);
    EXPECT_FALSE(p.already_journaled(DGDO_IN_RIDE_REQUEST, bytes(commands[1]), static_cast<uint32_t>(commands[1].size()),
                                     t0 + 2 * minute + 1, answers));  // past the window
}

TEST(Persistence, ReplayingAJournalWithTheJumpGivesTheLiveDigest) {
    TempStateDir t;
    const auto in = scripted_inputs(61, 1500);
    const size_t cut = in.size() / 2;
    {
        Recorder rec(t.dir);
        rec.run(in, 0, cut);
    }
    PersistOptions o = t.options(FsyncPolicy::Never);
    Core live;
    {
        Persistence p(o);
        ASSERT_EQ(p.start(live, Config{}, 1'000'000'000), 0);
        for (size_t i = cut; i < in.size(); ++i) {  // the engine goes on after its jump
            p.add(in[i]);
            ASSERT_EQ(p.commit(), 0);
            std::vector<OutRecord> out;
            live.apply(in[i], out);
        }
    }
    Core replayed;
    const Recovery r = recover(replayed, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr});
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.replayed, in.size() + 1);  // the jump is one of its inputs
    EXPECT_EQ(r.digest, live.digest());
    std::string a, b;
    live.save(a);
    replayed.save(b);
    EXPECT_EQ(a, b);
}

TEST(Persistence, AFreshStateDirectoryStartsWithoutAJump) {
    TempStateDir t;
    PersistOptions o = t.options();
    Core core;
    {
        Persistence p(o);
        ASSERT_EQ(p.start(core, Config{}, 1'000'000'000), 0);
    }
    EXPECT_EQ(core.next_order_id(), Core{}.next_order_id());
    EXPECT_TRUE(journal_records(t.dir).empty());
}

// Power went before the first sync: the journal lost every record, not the segment made (and
// synced) at the first start. Those records had handed out ids: the next start jumps all the same.
TEST(Persistence, AStateDirectoryWhoseEveryRecordWasLostStillJumps) {
    TempStateDir t;
    PersistOptions o = t.options(FsyncPolicy::Never);
    {
        Persistence p(o);
        Core core;
        ASSERT_EQ(p.start(core, Config{}, 1'000'000'000), 0);
        ASSERT_EQ(list_segments(t.dir.journal()).size(), 1u);  // made at the first start
    }
    Core core;
    Persistence p(o);
    ASSERT_EQ(p.start(core, Config{}, 1'000'000'000), 0);
    EXPECT_EQ(core.next_order_id(), Core{}.next_order_id() + kRecoveryGap);
}

// A journal written before the jump existed (no JOURNAL_RECOVERED anywhere) recovers as before,
// and the start that recovers it jumps.
TEST(Persistence, AJournalFromBeforeTheJumpStillRecoversAndThenJumps) {
    TempStateDir t;
    const auto in = scripted_inputs(62, 600);
    uint64_t digest = 0, next = 0;
    {
        Recorder rec(t.dir);
        rec.run(in, 0, in.size());
        digest = rec.core.digest();
        next = rec.core.next_order_id();
    }
    Core core;
    const Recovery r = recover(core, Config{}, t.dir, RecoverOptions{false, false, nullptr, nullptr});
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.digest, digest);
    PersistOptions o = t.options();
    Core started;
    Persistence p(o);
    ASSERT_EQ(p.start(started, Config{}, 1'000'000'000), 0);
    EXPECT_EQ(started.next_order_id(), next + kRecoveryGap);
}

// A start on the boot that wrote the state directory last lost nothing (the kernel still holds
// every write): no jump. A start under another boot (the power went, or a reboot) jumps, once:
// the boot file then names the new boot.
TEST(Persistence, OnlyTheFirstStartOnANewBootJumps) {
    TempStateDir t;
    PersistOptions o = t.options(FsyncPolicy::Never);
    o.boot_id = "boot-a";
    Harness h;  // input builders
    uint64_t next = 0;  // the next order id when the last engine stopped
    auto start = [&](const std::string& boot, size_t rides_from) {
        o.boot_id = boot;
        Core core;
        Persistence p(o);
        EXPECT_EQ(p.start(core, Config{}, 1'000'000'000), 0);
        const uint64_t at_start = core.next_order_id();
        for (const auto& in : rides(h, rides_from, 2)) {  // the engine goes on: two more orders
            p.add(in);
            EXPECT_EQ(p.commit(), 0);
            std::vector<OutRecord> out;
            core.apply(in, out);
        }
        next = core.next_order_id();
        return at_start;
    };
    EXPECT_EQ(start("boot-a", 0), Core{}.next_order_id());  // fresh: no jump
    uint64_t stopped = next;
    EXPECT_EQ(start("boot-a", 10), stopped);  // killed and restarted on the same boot: no jump
    stopped = next;
    EXPECT_EQ(start("boot-b", 20), stopped + kRecoveryGap);  // the machine restarted: a jump
    stopped = next;
    EXPECT_EQ(start("boot-b", 30), stopped);  // the same new boot again: none
    stopped = next;
    EXPECT_EQ(start("", 40), stopped + kRecoveryGap);  // a boot it cannot tell: a jump, to be safe
    std::ifstream f(t.dir.root + "/boot");
    std::string named;
    std::getline(f, named);
    EXPECT_EQ(named, "boot-b");  // (an unknown boot is never written)
}

}  // namespace
}  // namespace dgdo::test
