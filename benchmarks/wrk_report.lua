-- wrk script of bench_serving.py: the request from the environment, the report as one JSON line.
--   WRK_METHOD     GET (default) or POST
--   WRK_BODY_FILE  a file holding the JSON body of a POST
local method = os.getenv("WRK_METHOD")
local body_file = os.getenv("WRK_BODY_FILE")
if method then
  wrk.method = method
end
if body_file then
  local handle = assert(io.open(body_file, "rb"))
  wrk.body = handle:read("*a")
  handle:close()
  wrk.headers["Content-Type"] = "application/json"
end

-- Latencies are in microseconds; errors.status counts responses that are not 2xx or 3xx.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %.1f, ' ..
    '"p90_us": %.1f, "p99_us": %.1f, "max_us": %.1f, "mean_us": %.1f, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, ' ..
    '"timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency.max, latency.mean,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
