// An optional observer of the core's dispatch decisions, for `dgdo-engine replay`.
//
// The core calls it at each decision point when one is set (Core::set_trace);
// live, it is null and costs one branch. It sees what the outputs cannot say:
// which drivers were near an order, which of them could take it and why the
// others could not, and what the search did when nobody could.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dgdo {

struct Order;

struct TraceCandidate {
    std::string driver;
    double distance_m = 0;
    double eta_s = 0;
    const char* why_not = nullptr;  // null: eligible; else "already tried", "has an offer", "on a trip", ...
};

class CoreTrace {
public:
    virtual ~CoreTrace() = default;
    // A search for `o`'s driver: the nearest drivers around its pickup (within wide_radius_m),
    // eligible or not, and whom it picked ("" = nobody).
    virtual void search(const Order& o, const std::vector<TraceCandidate>& near, const std::string& picked,
                        double radius_m, double wide_radius_m) = 0;
    // Anything else worth a line in the order's timeline ("retry scheduled", "exhausted: no_driver at ...").
    virtual void note(uint64_t order, const std::string& what) = 0;
};

}  // namespace dgdo
