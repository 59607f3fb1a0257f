-- One of the bench servers' 10k keys per request, Zipf-distributed (key i
-- with weight 1 / (i + 1)^s, s = ZIPF_S, default 1.0): a few hot keys and
-- a long tail, as API traffic looks. With UNKNOWN_PCT=p, p percent of
-- requests carry a key no server knows (`ak_bench_` and a number from
-- 100000 up: same length, never one of the 10k). Used by `compare`.
local keys = 10000
local s = tonumber(os.getenv("ZIPF_S") or "1.0")
local unknown_pct = tonumber(os.getenv("UNKNOWN_PCT") or "0")

local function key(i)
  return string.format("ak_bench_%06d", i) .. string.rep("x", 28)
end

local headers = {}
local cdf = {}
local total = 0
for i = 0, keys - 1 do
  total = total + 1 / (i + 1) ^ s
  cdf[i + 1] = total
  headers[i + 1] = "Bearer " .. key(i)
end
for i = 1, keys do
  cdf[i] = cdf[i] / total
end

local function pick()
  local u = math.random()
  local lo, hi = 1, keys
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function init(args)
  math.randomseed(os.time())
end

request = function()
  local h
  if unknown_pct > 0 and math.random() * 100 < unknown_pct then
    h = "Bearer " .. key(math.random(100000, 999999))
  else
    h = headers[pick()]
  end
  return wrk.format("GET", "/v1/whoami", { ["Authorization"] = h })
end
