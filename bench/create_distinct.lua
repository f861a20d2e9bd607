-- wrk script: POST /v1/batches, every request with a DISTINCT idempotency key.
-- Key = <BENCH_KEY_PREFIX>-<wrk thread id>-<random>-<counter>, so keys never repeat
-- across threads, wrk processes (each gets its own prefix) or runs.
-- BENCH_HIST_OUT (optional): file to which done() writes the raw summary and the
-- latency histogram, so bench.sh can merge several wrk processes exactly.

local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

local counter = 0
local key_prefix
local headers = { ["Content-Type"] = "application/json" }
local body_head = '{"input_file_id":"file-bench","endpoint":"/v1/chat/completions",'
   .. '"completion_window":"24h","metadata":{"k":"v"},"idempotency_key":"'

function init(args)
   math.randomseed(os.time() + (tid or 0) * 7919)
   key_prefix = (os.getenv("BENCH_KEY_PREFIX") or "bench")
      .. "-" .. tostring(tid or 0)
      .. "-" .. string.format("%08x", math.random(0, 0x7fffffff))
      .. "-"
end

function request()
   counter = counter + 1
   return wrk.format("POST", "/v1/batches", headers, body_head .. key_prefix .. counter .. '"}')
end

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
