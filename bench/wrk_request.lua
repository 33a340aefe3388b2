-- One request shape per run, configured from the environment by bench/http_load.py:
--   BENCH_METHOD  GET or POST
--   BENCH_TOKEN   bearer token sent on every request
--   BENCH_BODY    request body (POST only), sent as application/json
--   BENCH_REPORT  file the summary is written to, as JSON, when the run ends

wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or "")
wrk.headers["Accept"] = "application/json"
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local errors = summary.errors
  local report = string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "stdev": %.1f, '
      .. '"p50": %d, "p90": %d, "p99": %d, "p999": %d}}',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)
  )
  local path = os.getenv("BENCH_REPORT")
  if path and path ~= "" then
    local file = assert(io.open(path, "w"))
    file:write(report)
    file:close()
  else
    io.write(report .. "\n")
  end
end
