// Finished orders are forgotten after retention_s.
#undef NDEBUG
#include "core_harness.hpp"

namespace dgdo::test {
namespace {

TEST(CoreRetention, FinishedOrdersArePrunedAfterTheRetention) {
    Config c;
    c.retention_s = 100;
    Harness h(c);
    h.online("d1", at(100));
    const auto r = h.ride("p1", kCenter, 77);
    const uint64_t done = as<dgdo_out_command_result>(r[0]).order_id;
    h.driver_cmd("d1", done, DGDO_CMD_ACCEPT);
    h.driver_cmd("d1", done, DGDO_CMD_ARRIVED);
    h.driver_cmd("d1", done, DGDO_CMD_START);
    h.driver_cmd("d1", done, DGDO_CMD_COMPLETE);
    const uint64_t canceled = h.order_for("p2");
    h.passenger_cmd("p2", canceled, DGDO_CMD_CANCEL);
    const uint64_t active = h.order_for("p3");  // offered to d1, never answered... until it is
    h.driver_cmd("d1", active, DGDO_CMD_ACCEPT);
    EXPECT_EQ(h.core.idem_count(), 0u);  // a key lives as long as its order (test_core_delivery.cpp)

    h.tick(99);
    EXPECT_NE(h.core.find_order(done), nullptr);  // still inside the retention
    h.tick(1);
    EXPECT_EQ(h.core.find_order(done), nullptr);
    EXPECT_EQ(h.core.find_order(canceled), nullptr);
    EXPECT_NE(h.core.find_order(active), nullptr);  // active orders are never pruned
    EXPECT_EQ(result_of(h.passenger_cmd("p1", done, DGDO_CMD_CANCEL)), DGDO_RESULT_NOT_FOUND);
}

TEST(CoreRetention, NoDriverOrdersArePrunedToo) {
    Config c;
    c.retention_s = 10;
    c.search_timeout_s = 5;
    Harness h(c);
    const uint64_t id = h.order_for("p1");
    h.tick(5);
    EXPECT_EQ(h.state(id), OrderState::NoDriver);
    h.tick(10);
    EXPECT_EQ(h.core.find_order(id), nullptr);
    EXPECT_EQ(h.core.order_count(), 0u);
}

}  // namespace
}  // namespace dgdo::test
