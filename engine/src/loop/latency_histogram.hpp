#pragma once
// Offer-decision times as a Prometheus histogram: cumulative counts per bucket, their sum and
// count, sent in every ENGINE_STATS (include/dgdo/events.h) for the sidecar to export.
//
// add() runs once per offer the core decides: a scan of 13 bounds and three increments, no
// allocation, no sort. The bounds are the header's, shared with the sidecar's push histogram.

#include <array>
#include <cstdint>
#include <cstring>

#include "dgdo/events.h"

namespace dgdo {

class LatencyHistogram {
public:
    static constexpr std::array<uint64_t, DGDO_LATENCY_BUCKETS> kBoundsNs{DGDO_LATENCY_BOUNDS_NS};

    void add(uint64_t ns) {
        size_t i = 0;
        while (i < kBoundsNs.size() && ns > kBoundsNs[i]) ++i;  // bounds are inclusive (Prometheus `le`)
        ++buckets_[i];
        ++count_;
        sum_ns_ += ns;
    }

    // Fills the histogram fields of an ENGINE_STATS body in place.
    void write_to(uint8_t* body) const {
        std::memcpy(body + offsetof(dgdo_out_engine_stats, match_count), &count_, sizeof count_);
        std::memcpy(body + offsetof(dgdo_out_engine_stats, match_sum_ns), &sum_ns_, sizeof sum_ns_);
        std::memcpy(body + offsetof(dgdo_out_engine_stats, match_buckets), buckets_.data(), sizeof buckets_);
    }

    uint64_t count() const { return count_; }
    uint64_t sum_ns() const { return sum_ns_; }
    const std::array<uint64_t, DGDO_LATENCY_BUCKETS + 1>& buckets() const { return buckets_; }

private:
    static_assert(sizeof(dgdo_out_engine_stats::match_buckets) == sizeof(uint64_t) * (DGDO_LATENCY_BUCKETS + 1));
    std::array<uint64_t, DGDO_LATENCY_BUCKETS + 1> buckets_{};  // the last one: above every bound
    uint64_t count_ = 0;
    uint64_t sum_ns_ = 0;
};

}  // namespace dgdo
