-- Shared by the wrk scripts: done() writes the run's totals and its latency
-- histogram (microseconds) to $BENCH_HIST_OUT, for bench.sh to merge exactly.
--   summary <requests> <duration_us> <connect> <read> <write> <status> <timeout>
--   lat <value_us> <count>      (one line per distinct latency value)

function done(summary, latency, requests)
   local out = os.getenv("BENCH_HIST_OUT")
   if not out then return end
   local f = assert(io.open(out, "w"))
   local e = summary.errors
   f:write(string.format("summary %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
      e.connect, e.read, e.write, e.status, e.timeout))
   for i = 1, #latency do
      local v, c = latency(i)
      f:write(string.format("lat %d %d\n", v, c))
   end
   f:close()
end
