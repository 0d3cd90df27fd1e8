// Great-circle distance and ETA arithmetic.
#pragma once

#include <cmath>

#include "dgdo/events.h"

namespace dgdo {

inline constexpr double kEarthRadiusM = 6371008.8;  // IUGG mean radius
inline constexpr double kPi = 3.14159265358979323846;
inline constexpr double kMetresPerDegree = kEarthRadiusM * kPi / 180.0;  // of latitude

inline double haversine_m(dgdo_point a, dgdo_point b) {
    constexpr double rad = kPi / 180.0;
    const double dlat = (b.lat - a.lat) * rad;
    const double dlon = (b.lon - a.lon) * rad;
    const double s = std::sin(dlat / 2) * std::sin(dlat / 2) +
                     std::cos(a.lat * rad) * std::cos(b.lat * rad) * std::sin(dlon / 2) * std::sin(dlon / 2);
    return 2.0 * kEarthRadiusM * std::asin(std::sqrt(std::fmin(1.0, s)));
}

inline bool valid_point(dgdo_point p) {
    return std::isfinite(p.lat) && std::isfinite(p.lon) && p.lat >= -90.0 && p.lat <= 90.0 && p.lon >= -180.0 &&
           p.lon <= 180.0;
}

// Seconds to drive `distance_m` of great-circle distance.
inline double drive_s(double distance_m, double detour, double speed_kmh) {
    return distance_m * detour / (speed_kmh / 3.6);
}

}  // namespace dgdo
