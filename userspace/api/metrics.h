/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Prometheus text exposition (format 0.0.4) rendered from the status document,
 * so GET /metrics can never disagree with GET /api/v1/status.
 */
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace sk {

/* Content-Type of the text exposition format this renders. */
constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

/*
 * Pure: emits only the series whose source fields are present in status (a
 * "sk.status/1" document); unknown or mistyped fields are skipped, never an
 * error. Every family has HELP and TYPE lines; label values are escaped.
 */
std::string statusToMetrics(const nlohmann::json &status);

/* Escapes a label value: backslash, double quote and newline. */
std::string escapeLabelValue(std::string_view value);

} /* namespace sk */
