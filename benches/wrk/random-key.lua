-- One of the bench-server's 10k keys at random per request.
math.randomseed(os.time())
request = function()
  local i = math.random(0, 9999)
  local key = string.format("ak_bench_%06d", i) .. string.rep("x", 28)
  return wrk.format("GET", "/v1/whoami", { ["Authorization"] = "Bearer " .. key })
end
