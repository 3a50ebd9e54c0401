-- wrk: POST /v1/say to the Go gateway (grpc-gateway), its echo.Msg as JSON. BENCH_TEXT is the
-- text, the same as the one sent to Dialog Gateway.
wrk.method = "POST"
wrk.body = '{"id":"wrk-1","text":"' .. os.getenv("BENCH_TEXT") .. '"}'
wrk.headers["Content-Type"] = "application/json"
