// The page at `/` on admin_listen: one self-contained HTML page (no external assets) that
// refreshes itself from /status every two seconds, for the on-call who has no Grafana at hand
// during a drill: hosts with role, state and lag; pools and their saturation; the statements
// costing the most time, with p95; slow statements with their advice; failovers. Everything a
// client sent (statement texts) is put on the page as text, never as HTML.
#pragma once

#include <string_view>

namespace pgvalve::proxy {

std::string_view status_page_html();

}  // namespace pgvalve::proxy
