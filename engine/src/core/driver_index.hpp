// Where online drivers are. The core asks it two questions; a grid index
// replaces the linear one later without touching the core.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dgdo/events.h"

namespace dgdo {

struct Candidate {
    std::string id;
    dgdo_point pos;
    double distance_m;
};

class DriverIndex {
public:
    virtual ~DriverIndex() = default;
    virtual void upsert(const std::string& id, dgdo_point pos) = 0;
    virtual void erase(const std::string& id) = 0;
    // Nearest driver within radius_m that `eligible` accepts; ties go to the smaller id.
    virtual std::optional<Candidate> nearest(dgdo_point at, double radius_m,
                                             const std::function<bool(const std::string&)>& eligible) const = 0;
    // Up to `limit` drivers within radius_m, nearest first (ties by id).
    virtual std::vector<Candidate> within(dgdo_point at, double radius_m, std::size_t limit) const = 0;
    virtual std::size_t size() const = 0;
};

// O(n) scan; ordered by id so ties resolve the same way every run.
class LinearIndex final : public DriverIndex {
public:
    void upsert(const std::string& id, dgdo_point pos) override;
    void erase(const std::string& id) override;
    std::optional<Candidate> nearest(dgdo_point at, double radius_m,
                                     const std::function<bool(const std::string&)>& eligible) const override;
    std::vector<Candidate> within(dgdo_point at, double radius_m, std::size_t limit) const override;
    std::size_t size() const override { return pos_.size(); }

private:
    std::map<std::string, dgdo_point> pos_;
};

}  // namespace dgdo
