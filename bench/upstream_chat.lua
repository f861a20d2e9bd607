-- wrk script: the chat-completions request a batch line of bench/engine.py sends.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench-model","messages":[{"role":"user","content":"hello 1"}]}'
