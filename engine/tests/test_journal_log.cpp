// The journal's priorities for engine lines: the glyph -> "<N>" mapping, and which stderr counts
// as the journal's stream. The wrapped stderr itself is run by tests/test_engine_journal.py
// against the real engine.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "loop/journal_log.hpp"

namespace {

using dgdo::journal_priority;

TEST(JournalPriority, EachGlyphHasItsLevel) {
    EXPECT_EQ(journal_priority("dgdo-engine: ! worker 3 refused: already attached\n"), "<4>");
    EXPECT_EQ(journal_priority("dgdo-engine: x worker 3 detached: closed\n"), "<5>");
    EXPECT_EQ(journal_priority("dgdo-engine: = worker 3 attached\n"), "<6>");
}

TEST(JournalPriority, AFlagErrorWithoutAGlyphIsAnError) {
    EXPECT_EQ(journal_priority("dgdo-engine: unknown option --nope (see dgdo-engine --help)\n"), "<3>");
    EXPECT_EQ(journal_priority("dgdo-engine: !\n"), "<3>");  // a glyph is followed by a space
}

TEST(JournalPriority, AnyOtherLineIsInfo) {
    EXPECT_EQ(journal_priority("dgdo-engine ready control=/tmp/c pid=1 epoch=2\n"), "<6>");
    EXPECT_EQ(journal_priority("  a continuation\n"), "<6>");
    EXPECT_EQ(journal_priority(""), "<6>");
}

std::string dev_ino(int fd) {
    struct stat st {};
    EXPECT_EQ(fstat(fd, &st), 0);
    return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

TEST(JournalStream, OnlyTheFileItNamesIsTheJournal) {
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    const int other = open("/dev/null", O_WRONLY | O_CLOEXEC);
    ASSERT_GE(other, 0);
    const std::string named = dev_ino(p[1]);
    EXPECT_TRUE(dgdo::is_journal_stream(named.c_str(), p[1]));
    EXPECT_FALSE(dgdo::is_journal_stream(named.c_str(), other));  // inherited, stderr redirected since
    EXPECT_FALSE(dgdo::is_journal_stream(nullptr, p[1]));
    EXPECT_FALSE(dgdo::is_journal_stream("", p[1]));
    EXPECT_FALSE(dgdo::is_journal_stream((named + "x").c_str(), p[1]));
    EXPECT_FALSE(dgdo::is_journal_stream("8", p[1]));
    close(p[0]);
    close(p[1]);
    close(other);
}

TEST(JournalStream, ALineWrittenByHandIsLeftAloneWhenStderrIsNotPrefixed) {
    char buf[64] = "dgdo-engine: ! x\n";
    const size_t n = std::strlen(buf);
    EXPECT_EQ(dgdo::with_journal_priority(buf, n, sizeof buf), n);
    EXPECT_STREQ(buf, "dgdo-engine: ! x\n");
}

}  // namespace
