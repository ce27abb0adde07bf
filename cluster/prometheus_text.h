// Prometheus text exposition (version 0.0.4) helpers shared by every
// component that renders part of stratad's /metrics page: the service
// metrics, the cluster node (registration, rebalancing) and the cluster
// config follower. Values are written with 17 significant digits, so byte
// counters stay exact up to 2^53.
#ifndef STRATA_CLUSTER_PROMETHEUS_TEXT_H_
#define STRATA_CLUSTER_PROMETHEUS_TEXT_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata::cluster {

// "# HELP name help\n# TYPE name type\n".
inline void AppendMetricHeader(std::string* out, absl::string_view name,
                               absl::string_view type, absl::string_view help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ",
                  type, "\n");
}

// "name{labels} value\n" (no braces when labels is empty). Labels are
// written as given: the caller escapes label values.
inline void AppendMetricSample(std::string* out, absl::string_view name,
                               absl::string_view labels, double value) {
  absl::StrAppend(out, name, labels.empty() ? "" : "{", labels,
                  labels.empty() ? "" : "}", " ",
                  absl::StrFormat("%.17g", value), "\n");
}

// A metric with one unlabelled sample: header + sample.
inline void AppendMetric(std::string* out, absl::string_view name,
                         absl::string_view type, absl::string_view help,
                         double value) {
  AppendMetricHeader(out, name, type, help);
  AppendMetricSample(out, name, "", value);
}

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_PROMETHEUS_TEXT_H_
