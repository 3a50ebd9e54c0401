package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// holdIdle opens up to n WebSocket connections (dialParallel dials at a time, all
// within openWithin), prints one JSON line with how many opened, keeps them open
// for hold, closes them and prints a second line. The caller reads the gateway's
// memory between the two lines.
func holdIdle(o *options, n, dialParallel int, openWithin, hold time.Duration) {
	deadline := time.Now().Add(openWithin)
	workers := make([]worker, n)
	var failed int64
	var firstErr atomic.Value
	sem := make(chan struct{}, dialParallel)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; i < n; i++ {
		if time.Now().After(deadline) {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if time.Now().After(deadline) {
				return
			}
			w, err := dialWS(o, i)
			if err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				atomic.AddInt64(&failed, 1)
				return
			}
			workers[i] = w
			// Read, so that pings are answered while the connection is held.
			go func(c *wsWorker) {
				for {
					if _, _, err := c.conn.ReadMessage(); err != nil {
						return
					}
				}
			}(w.(*wsWorker))
		}(i)
	}
	wg.Wait()
	openS := time.Since(t0).Seconds()
	opened := 0
	for _, w := range workers {
		if w != nil {
			opened++
		}
	}
	out := map[string]interface{}{
		"mode": "idle", "asked": n, "opened": opened, "failed": failed, "open_s": openS,
	}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Stdout.Sync()
	time.Sleep(hold)
	for _, w := range workers {
		if w != nil {
			w.close()
		}
	}
	fmt.Println(`{"closed": true}`)
}
