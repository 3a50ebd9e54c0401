-- wrk: POST /messages to Dialog Gateway, one user text message per request (docs/protocol.md).
-- The message has no id, so the gateway gives each request a new one. BENCH_TOKEN is the
-- bearer token; BENCH_TEXT the text.
wrk.method = "POST"
wrk.body = '{"role":"user","content":{"type":"text","text":"' .. os.getenv("BENCH_TEXT") .. '"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
