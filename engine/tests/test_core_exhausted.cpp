// "None left → no_driver": once no untried available driver is in range, the
// passenger hears no_driver after exhausted_wait_s, not after the 60 s cap.
#undef NDEBUG
#include <fstream>

#include "core_harness.hpp"
#include "loop/cli.hpp"

namespace dgdo::test {
namespace {

uint8_t last_status_to(const std::vector<OutRecord>& out, const std::string& p) {
    const auto s = statuses_to(out, DGDO_ROLE_PASSENGER, p);
    return s.empty() ? 0 : s.back();
}

TEST(CoreExhausted, NobodyInRangeAtRequestEndsAsNoDriverAfterTheWait) {
    Harness h;
    h.online("far", at(9000));  // outside the wide radius
    const uint64_t id = h.order_for("p1");
    EXPECT_TRUE(of_type(h.tick(9.9), DGDO_OUT_ORDER_UPDATE).empty());
    const auto out = h.tick(0.1);
    const auto upd = to_whom(out, DGDO_OUT_ORDER_UPDATE, DGDO_ROLE_PASSENGER, "p1");
    ASSERT_EQ(upd.size(), 1u);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).status, DGDO_ORDER_NO_DRIVER);
    EXPECT_EQ(as<dgdo_out_order_update>(upd[0]).reason, DGDO_REASON_NO_DRIVER);
    EXPECT_EQ(h.state(id), OrderState::NoDriver);
    EXPECT_TRUE(of_type(h.tick(60), DGDO_OUT_ORDER_UPDATE).empty());  // the search cap does not fire again
}

TEST(CoreExhausted, ZeroWaitEndsTheOrderInTheRequestItself) {
    Config c;
    c.exhausted_wait_s = 0;
    Harness h(c);
    const auto out = h.ride("p1");
    EXPECT_EQ(statuses_to(out, DGDO_ROLE_PASSENGER, "p1"),
              (std::vector<uint8_t>{DGDO_ORDER_SEARCHING, DGDO_ORDER_NO_DRIVER}));
}

TEST(CoreExhausted, EveryCandidateRefusingEndsAsNoDriverAfterTheWait) {
    Harness h;
    h.online("d1", at(100));
    h.online("d2", at(4000));  // in the wide ring
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_REJECT);
    ASSERT_EQ(h.core.find_order(id)->driver, "d2");
    h.tick(3);
    h.driver_cmd("d2", id, DGDO_CMD_REJECT);  // nobody left from here
    EXPECT_EQ(h.state(id), OrderState::Searching);
    EXPECT_NE(last_status_to(h.tick(9.9), "p1"), DGDO_ORDER_NO_DRIVER);
    EXPECT_EQ(last_status_to(h.tick(0.1), "p1"), DGDO_ORDER_NO_DRIVER);
    EXPECT_EQ(h.core.find_driver("d1")->offer, 0u);
    EXPECT_EQ(h.core.find_driver("d2")->offer, 0u);
}

TEST(CoreExhausted, LastOfferExpiringStartsTheWait) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.tick(15);  // the offer expires; nobody else
    EXPECT_EQ(h.state(id), OrderState::Searching);
    h.tick(9.9);
    EXPECT_EQ(h.state(id), OrderState::Searching);
    h.tick(0.1);
    EXPECT_EQ(h.state(id), OrderState::NoDriver);
}

TEST(CoreExhausted, NewDriverDuringTheWaitGetsTheOffer) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_REJECT);
    h.tick(6);
    const auto out = h.online("d2", at(2500));
    EXPECT_EQ(offered_to(out, "d2"), id);
    EXPECT_TRUE(statuses_to(h.tick(6), DGDO_ROLE_PASSENGER, "p1").empty());  // past the first wait: still going
    EXPECT_EQ(result_of(h.driver_cmd("d2", id, DGDO_CMD_ACCEPT)), DGDO_RESULT_OK);
}

TEST(CoreExhausted, EachRefusalStartsAFreshWait) {
    Harness h;
    const uint64_t id = h.order_for("p1");
    h.tick(8);
    h.online("d1", at(300));
    h.driver_cmd("d1", id, DGDO_CMD_REJECT);
    h.tick(9.9);
    EXPECT_EQ(h.state(id), OrderState::Searching);
    h.tick(0.1);
    EXPECT_EQ(h.state(id), OrderState::NoDriver);
}

TEST(CoreExhausted, DriverWhoAlreadyRefusedDoesNotRestartTheSearch) {
    Harness h;
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.driver_cmd("d1", id, DGDO_CMD_REJECT);
    h.tick(5);
    h.status("d1", DGDO_DRIVER_OFFLINE);
    h.status("d1", DGDO_DRIVER_ONLINE);  // available again, but tried
    h.tick(5);
    EXPECT_EQ(h.state(id), OrderState::NoDriver);
}

TEST(CoreExhausted, SearchTimeoutStaysTheHardCapWhileOffersKeepComing) {
    Config c;
    c.search_timeout_s = 20;
    Harness h(c);
    h.online("d1", at(100));
    const uint64_t id = h.order_for("p1");
    h.tick(15);  // d1's offer expires
    h.online("d2", at(200));
    EXPECT_EQ(h.core.find_order(id)->driver, "d2");
    const auto out = h.tick(5);
    EXPECT_EQ(to_whom(out, DGDO_OUT_CANCEL_ORDER, DGDO_ROLE_DRIVER, "d2").size(), 1u);
    EXPECT_EQ(last_status_to(out, "p1"), DGDO_ORDER_NO_DRIVER);
}

TEST(CoreExhausted, PassengerCancelDuringTheWaitSendsNoLaterNoDriver) {
    Harness h;
    const uint64_t id = h.order_for("p1");
    h.tick(4);
    h.passenger_cmd("p1", id, DGDO_CMD_CANCEL);
    EXPECT_TRUE(of_type(h.tick(10), DGDO_OUT_ORDER_UPDATE).empty());
    EXPECT_EQ(h.state(id), OrderState::Canceled);
}

TEST(CoreExhausted, BatchedOrderWithNobodyInRangeEndsAfterTheWait) {
    Config c;
    c.matching = Matching::Batched;
    Harness h(c);
    h.online("far", at(9000));
    const uint64_t id = h.order_for("p1");
    h.tick(2);  // the window closes with no candidate: the wait starts here
    h.tick(9.9);
    EXPECT_EQ(h.state(id), OrderState::Searching);
    EXPECT_EQ(last_status_to(h.tick(0.1), "p1"), DGDO_ORDER_NO_DRIVER);
}

TEST(CoreExhausted, WaitIsAFlagAndAConfigKey) {
    std::vector<std::string> args{"dgdo-engine", "--control", "/tmp/s", "--exhausted-wait-s", "0"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    int code = -1;
    auto o = parse_cli(static_cast<int>(argv.size()), argv.data(), &code);
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->core.exhausted_wait_s, 0);
    Options file;
    EXPECT_EQ(apply_setting(file, "exhausted_wait_s", "4.5"), "");
    EXPECT_EQ(file.core.exhausted_wait_s, 4.5);
    EXPECT_NE(apply_setting(file, "exhausted-wait-s", "-1"), "");
    EXPECT_EQ(Config{}.exhausted_wait_s, 10.0);
}

TEST(CoreLoad, RetryIntervalAndBatchCapAreSettings) {
    Options o;
    EXPECT_EQ(apply_setting(o, "retry_interval_s", "0.5"), "");
    EXPECT_EQ(apply_setting(o, "--batch-max-orders", "64"), "");
    EXPECT_EQ(o.core.retry_interval_s, 0.5);
    EXPECT_EQ(o.core.batch_max_orders, 64u);
    EXPECT_NE(apply_setting(o, "batch-max-orders", "0"), "");
    EXPECT_NE(apply_setting(o, "retry-interval-s", "0"), "");
}

}  // namespace
}  // namespace dgdo::test
