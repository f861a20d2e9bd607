-- wrk script: POST /v1/batches, every request with the SAME idempotency key
-- (BENCH_REPLAY_KEY): after the first, each one is an idempotent replay (200,
-- same batch, Idempotent-Replayed: true).

wrk.method = "POST"
wrk.path = "/v1/batches"
wrk.headers["Content-Type"] = "application/json"

function init(args)
   local key = os.getenv("BENCH_REPLAY_KEY") or "bench-replay-fixed"
   wrk.body = '{"input_file_id":"file-bench","endpoint":"/v1/chat/completions",'
      .. '"completion_window":"24h","metadata":{"k":"v"},"idempotency_key":"' .. key .. '"}'
end

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
