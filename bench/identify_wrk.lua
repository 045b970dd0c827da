-- wrk script for bench/identify.py --wrk: POST /v1/identify with one multipart image part.
-- The bodies are files written by the bench (FACEBRIDGE_WRK_BODIES: a directory of
-- body-N.bin, FACEBRIDGE_WRK_BOUNDARY: their multipart boundary); each connection's thread
-- cycles through them. done() prints one JSON line the bench parses.
local dir = os.getenv("FACEBRIDGE_WRK_BODIES")
local boundary = os.getenv("FACEBRIDGE_WRK_BOUNDARY")
local key = os.getenv("FACEBRIDGE_WRK_KEY")
local bodies = {}
local n = 0

local function load()
  local i = 0
  while true do
    local fh = io.open(dir .. "/body-" .. i .. ".bin", "rb")
    if fh == nil then break end
    bodies[i + 1] = fh:read("*a")
    fh:close()
    i = i + 1
  end
  if i == 0 then error("no bodies under " .. tostring(dir)) end
end

function init(args)
  load()
  n = math.random(#bodies) - 1
end

local headers = {
  ["Content-Type"] = "multipart/form-data; boundary=" .. tostring(boundary),
  ["X-API-Key"] = key,
}

function request()
  n = n + 1
  return wrk.format("POST", "/v1/identify", headers, bodies[(n % #bodies) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
